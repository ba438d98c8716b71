//! The admin servers: routing requests to the documents of [`super::api`].

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::broadcast,
};
use tracing::{debug, warn};

use super::{Health, api, lane_map, metrics::Gauges, ui};
use crate::{bpf, bpf::Datapath, config::Config, explain, router::Router};

/// Why the admin socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another agent answers on the socket.
    #[error("another laneway agent is serving {0}: stop it first")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot create the admin socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the admin API reads.
pub struct AdminState {
    /// The router (snapshot, telemetry).
    pub router: Arc<Router>,
    /// The kernel side.
    pub datapath: Arc<Mutex<Datapath>>,
    /// Readiness.
    pub health: Arc<Health>,
    /// The config in force: the one the agent started with, then (static
    /// file) the last reload that was applied.
    pub config: arc_swap::ArcSwap<Config>,
    /// Redirect mode.
    pub mode: &'static str,
    /// Router listeners.
    pub listen: Vec<SocketAddr>,
    /// Set when a new agent takes over: this one drains and exits (or
    /// stands by).
    pub handover: tokio::sync::watch::Sender<bool>,
    /// This agent's rollout generation: an agent of an older one never
    /// takes the node over from it.
    pub generation: u64,
    /// The router's listening sockets (redirect and, in TC mode,
    /// transparent), for a successor to duplicate.
    pub listener_fds: Vec<ListenerFd>,
}

/// One of the router's listening sockets, as [`AdminState`] names it.
#[derive(Clone, Copy, Debug)]
pub struct ListenerFd {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its file descriptor in this process.
    pub fd: i32,
    /// Whether it is TC mode's transparent listener.
    pub transparent: bool,
}

type Body = BoxBody<Bytes, Infallible>;

/// One request on the agent's admin socket at `path`; the whole answer,
/// or `None` when no agent answers.
fn ask(path: &Path, method: &str, target: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: laneway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    Some(answer)
}

/// The agent that serves the admin socket at `path` now, if any.
pub async fn owner(path: &Path) -> Option<api::Owner> {
    let path = path.to_owned();
    let answer = tokio::task::spawn_blocking(move || ask(&path, "GET", "/handover/owner"))
        .await
        .ok()??;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Asks an agent serving `path` to hand over to this one, of rollout
/// `generation` (it drains and exits or stands by), and waits until it has
/// released the socket. `false` when none answers or it refuses (it owns
/// the node for a newer generation).
pub async fn take_over(path: &Path, generation: u64) -> bool {
    let path = path.to_owned();
    let asked = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let target = format!("/handover?generation={generation}");
        let Some(answer) = ask(&path, "POST", &target) else {
            return Ok(false);
        };
        if !answer.starts_with("HTTP/1.1 200") {
            warn!(answer = %answer.lines().last().unwrap_or_default(), "the running agent refused to hand over");
            return Ok(false);
        }
        // It removes the socket file as it starts draining.
        for _ in 0..250 {
            if !path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(true)
    })
    .await;
    matches!(asked, Ok(Ok(true)))
}

/// Serves the JSON admin API on a Unix socket at `path` (mode 0600).
pub fn serve_unix(
    path: &Path,
    state: Arc<AdminState>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::InUse(path.to_owned()));
    }
    let bind_err = |source| Error::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // A socket file left by an agent that died: nobody answers on it.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(connection(stream, move |req| {
                        api_response(req, state.clone())
                    }));
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

/// Serves `/healthz`, `/readyz` and `/metrics` on a TCP listener.
pub async fn serve_http(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(connection(stream, move |req| {
            let state = state.clone();
            async move { http_response(&req, &state) }
        }));
    }
}

async fn connection<S, F, Fut>(stream: S, handler: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "admin connection ended with an error");
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => text(status, body + "\n", "application/json"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &api::ApiError { error: message })
}

fn http_response(req: &Request<hyper::body::Incoming>, state: &AdminState) -> Response<Body> {
    let plain = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), plain),
        "/readyz" if state.health.is_ready() => text(StatusCode::OK, "ready\n".into(), plain),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first snapshot from the source of truth\n".into(),
            plain,
        ),
        "/metrics" => text(
            StatusCode::OK,
            state.router.telemetry.metrics.render(&gauges(state)),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/lanes" => json(StatusCode::OK, &lanes(state)),
        path => match ui::asset(path) {
            Some(asset) => {
                let mut response = text(StatusCode::OK, asset.body.to_owned(), asset.content_type);
                for &(name, value) in ui::HEADERS {
                    response
                        .headers_mut()
                        .insert(name, hyper::header::HeaderValue::from_static(value));
                }
                response
            }
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /metrics, /lanes or /ui\n".into(),
                plain,
            ),
        },
    }
}

async fn api_response(
    req: Request<hyper::body::Incoming>,
    state: Arc<AdminState>,
) -> Response<Body> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(StatusCode::OK, &status(&state)),
        (&Method::GET, "/pods") => json(StatusCode::OK, &pods(&state)),
        (&Method::GET, "/services") => {
            let services = services(&state, query.get("name").map(String::as_str));
            match (query.get("name"), services.services.is_empty()) {
                (Some(name), true) => error(StatusCode::NOT_FOUND, format!("no service {name:?}")),
                _ => json(StatusCode::OK, &services),
            }
        }
        (&Method::GET, "/lanes") => json(StatusCode::OK, &lanes(&state)),
        (&Method::GET, "/conns") => json(
            StatusCode::OK,
            &api::Conns {
                connections: state.router.telemetry.conns.list(),
            },
        ),
        (&Method::POST, "/explain") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}"),
                    );
                }
            };
            let ask: api::ExplainRequest = match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, format!("bad explain request: {e}"));
                }
            };
            match explain::explain(&state.router.applied(), &ask) {
                Ok(e) => json(StatusCode::OK, &e),
                Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
            }
        }
        (&Method::GET, "/trace") => trace(
            &state,
            query.get("service").cloned(),
            query.get("tag").cloned(),
        ),
        (&Method::GET, "/maps") => match maps(&state) {
            Ok(m) => json(StatusCode::OK, &m),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (&Method::GET, "/config") => json(StatusCode::OK, &**state.config.load()),
        // Without `addr`, the transparent listener: what agents before
        // redirect listeners were shared asked for.
        (&Method::GET, "/handover/listener") => {
            match handover_listener(&state, query.get("addr")) {
                Ok(fd) => json(
                    StatusCode::OK,
                    &api::InheritedListener {
                        pid: std::process::id() as i32,
                        fd,
                    },
                ),
                Err(missing) => error(StatusCode::NOT_FOUND, missing),
            }
        }
        (&Method::GET, "/handover/owner") => json(
            StatusCode::OK,
            &api::Owner {
                generation: state.generation,
                pid: std::process::id() as i32,
            },
        ),
        (&Method::POST, "/handover") => {
            let theirs: u64 = query
                .get("generation")
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            if theirs < state.generation {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "generation {} owns this node: an agent of generation {theirs} stands by",
                        state.generation
                    ),
                );
            }
            // Remove the socket now so the successor can bind it; this
            // agent's API goes away as it drains.
            let _ = std::fs::remove_file(&state.config.load().admin.socket);
            state.handover.send_replace(true);
            json(
                StatusCode::OK,
                &api::ApiError {
                    error: String::new(),
                },
            )
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no {path}: try /status, /pods, /services, /lanes, /conns, /explain, /trace, /maps, /config"
            ),
        ),
    }
}

/// The fd of the listener a successor asks for: the one on `addr`, or
/// without it the transparent one.
fn handover_listener(state: &AdminState, addr: Option<&String>) -> Result<i32, String> {
    match addr {
        None => state
            .listener_fds
            .iter()
            .find(|l| l.transparent)
            .map(|l| l.fd)
            .ok_or_else(|| "no transparent listener (not in TC mode)".to_owned()),
        Some(addr) => {
            let addr: std::net::SocketAddr =
                addr.parse().map_err(|e| format!("addr {addr:?}: {e}"))?;
            state
                .listener_fds
                .iter()
                .find(|l| l.addr == addr)
                .map(|l| l.fd)
                .ok_or_else(|| format!("no listener on {addr}"))
        }
    }
}

/// `a=1&b=x%2Fy` as a map (percent-decoded; `+` as space).
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (!k.is_empty()).then(|| (decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn gauges(state: &AdminState) -> Gauges {
    let endpoints = state.router.applied().snapshot.endpoint_states();
    let stats = state
        .datapath
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .stats()
        .unwrap_or_default();
    Gauges {
        active_connections: state.router.telemetry.conns.len() as u64,
        endpoints: endpoints
            .into_iter()
            .map(|((s, st), n)| (s, st, n))
            .collect(),
        redirected: stats.redirected,
        fail_open: stats.fail_open,
        kernel_routed: stats.kernel_routed,
    }
}

fn bpf_stats(stats: bpf::Stats) -> api::BpfStats {
    api::BpfStats {
        redirected: stats.redirected,
        fail_open: stats.fail_open,
        origdst_answered: stats.origdst_answered,
        origdst_missed: stats.origdst_missed,
        kernel_routed: stats.kernel_routed,
    }
}

fn status(state: &AdminState) -> api::Status {
    let applied = state.router.applied();
    let snapshot = &applied.snapshot;
    let dp = state.datapath.lock().unwrap_or_else(|p| p.into_inner());
    let cgroup = dp.cgroup().display().to_string();
    let router_entry = dp.router_entry().unwrap_or_default();
    let now = bpf::monotonic_ns();
    let age_ns = now.saturating_sub(router_entry.heartbeat_ns);
    let alive = router_entry.heartbeat_ns != 0 && age_ns <= laneway_common::HEARTBEAT_TIMEOUT_NS;
    api::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        mode: state.mode.into(),
        ready: state.health.is_ready(),
        programs: Datapath::programs()
            .map(|(name, hook)| api::ProgramStatus {
                name: name.into(),
                hook: hook.into(),
                attached_to: cgroup.clone(),
            })
            .chain(
                dp.tc_hooks()
                    .filter(|_| state.mode != "socket")
                    .map(|(name, hook)| {
                        let veths = dp.tc_interfaces();
                        api::ProgramStatus {
                            name: name.into(),
                            hook,
                            attached_to: match veths.is_empty() {
                                true => "(no pod veth yet)".into(),
                                false => veths.join(", "),
                            },
                        }
                    }),
            )
            .collect(),
        cgroup,
        maps: dp
            .fill_levels()
            .into_iter()
            .map(|(name, entries, capacity)| api::MapFill {
                name: name.into(),
                entries,
                capacity,
            })
            .collect(),
        router: api::RouterStatus {
            listen: state.listen.iter().map(ToString::to_string).collect(),
            redirect_ipv4: state.config.load().router.redirect_ipv4.to_string(),
            redirect_ipv6: state
                .config
                .load()
                .router
                .redirect_ipv6
                .map(|a| a.to_string()),
            heartbeat_age_ms: if router_entry.heartbeat_ns == 0 {
                0
            } else {
                age_ns / 1_000_000
            },
            alive,
        },
        snapshot: api::SnapshotStatus {
            source: snapshot.source.clone(),
            age_ms: snapshot.built_at.elapsed().as_millis() as u64,
            updates: state.router.telemetry.metrics.snapshot_updates(),
            services: snapshot.services.len() as u64,
            service_ports: snapshot.by_vip.len() as u64,
            endpoints: snapshot.endpoint_count() as u64,
            pods_enrolled: applied.pods_by_cookie.len() as u64,
            pods_unenrolled: applied.unenrolled.len() as u64,
        },
        bpf_stats: bpf_stats(dp.stats().unwrap_or_default()),
        connections_active: state.router.telemetry.conns.len() as u64,
    }
}

fn pods(state: &AdminState) -> api::Pods {
    let applied = state.router.applied();
    let mut enrolled: Vec<api::PodInfo> = applied
        .pods_by_cookie
        .iter()
        .map(|(&cookie, &i)| {
            let p = &applied.snapshot.pods[i];
            api::PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                tag: p.tag.as_ref().map(|t| t.to_string()),
                netns_cookie: cookie,
                netns: p.netns.display().to_string(),
                ips: p.ips.iter().map(ToString::to_string).collect(),
            }
        })
        .collect();
    enrolled.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    api::Pods {
        enrolled,
        unenrolled: applied
            .unenrolled
            .iter()
            .map(|(pod, reason)| api::UnenrolledPod {
                pod: pod.clone(),
                reason: reason.clone(),
            })
            .collect(),
    }
}

fn services(state: &AdminState, name: Option<&str>) -> api::Services {
    let applied = state.router.applied();
    let snapshot = &applied.snapshot;
    let wanted = |id: &crate::snapshot::ServiceId| match name {
        None => true,
        Some(n) => match n.split_once('/') {
            Some((ns, n)) => id.namespace == ns && id.name == n,
            None => id.name == n,
        },
    };
    let services = snapshot
        .services
        .iter()
        .filter(|s| wanted(&s.id))
        .map(|s| api::ServiceInfo {
            namespace: s.id.namespace.clone(),
            name: s.id.name.clone(),
            vips: s.vips.iter().map(ToString::to_string).collect(),
            policy: s.policy.to_string(),
            policy_error: s.policy_error.clone(),
            ports: s
                .ports
                .iter()
                .map(|&i| {
                    let port = &snapshot.ports[i];
                    let mut lanes: BTreeMap<Option<String>, Vec<api::EndpointInfo>> =
                        BTreeMap::new();
                    for b in &port.backends {
                        lanes
                            .entry(b.tag.as_ref().map(|t| t.to_string()))
                            .or_default()
                            .push(api::EndpointInfo {
                                address: b.addr.to_string(),
                                name: b.name.clone(),
                                serving: b.serving,
                                terminating: b.terminating,
                                eligible: b.eligible() && b.available(),
                                in_flight: b.load.in_flight(),
                                weight: if b.eligible() {
                                    b.load.warmup_weight(s.policy.warmup)
                                } else {
                                    0.0
                                },
                                ejected: b.load.ejected(),
                                external: b.external,
                            });
                    }
                    api::PortInfo {
                        port: port.port,
                        target_port: port.target_port,
                        protocol: port.protocol.to_string(),
                        lanes: lanes
                            .into_iter()
                            .map(|(tag, endpoints)| api::LaneInfo { tag, endpoints })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    api::Services { services }
}

fn lanes(state: &AdminState) -> api::LaneMap {
    let applied = state.router.applied();
    let totals = state.router.telemetry.metrics.request_totals();
    api::LaneMap {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: state.mode.into(),
        source: applied.snapshot.source.clone(),
        services: lane_map::services(&applied.snapshot, &totals),
    }
}

fn maps(state: &AdminState) -> Result<api::Maps, bpf::Error> {
    let applied = state.router.applied();
    let snapshot = &applied.snapshot;
    let dp = state.datapath.lock().unwrap_or_else(|p| p.into_inner());
    let mut enrolled: Vec<api::EnrolledEntry> = dp
        .enrolled_entries()
        .into_iter()
        .map(|(cookie, v)| api::EnrolledEntry {
            netns_cookie: cookie,
            pod_id: v.pod_id,
            lane: v.lane,
            pod: snapshot
                .pods
                .get(v.pod_id as usize)
                .map(ToString::to_string),
        })
        .collect();
    enrolled.sort_by_key(|e| e.pod_id);
    let mut services: Vec<api::ServiceEntry> = dp
        .service_entries()
        .into_iter()
        .map(|(k, v)| api::ServiceEntry {
            vip: bpf::socket_addr(&k.addr, k.port).to_string(),
            service_id: v.service_id,
            service: snapshot
                .services
                .get(v.service_id as usize)
                .map(|s| s.id.to_string()),
        })
        .collect();
    services.sort_by(|a, b| a.vip.cmp(&b.vip));
    let mut lane_endpoints: Vec<api::LaneEntry> = dp
        .lane_endpoint_entries()
        .into_iter()
        .map(|(k, v)| api::LaneEntry {
            vip: bpf::socket_addr(&k.addr, k.port).to_string(),
            lane: k.lane,
            tag: dp.lane_ids().tag_of(k.lane).map(ToString::to_string),
            endpoints: v
                .endpoints
                .iter()
                .take(v.count as usize)
                .map(|e| bpf::socket_addr(&e.addr, e.port).to_string())
                .collect(),
        })
        .collect();
    lane_endpoints.sort_by(|a, b| (&a.vip, a.lane).cmp(&(&b.vip, b.lane)));
    let r = dp.router_entry()?;
    Ok(api::Maps {
        enrolled,
        services,
        router: api::RouterEntry {
            addr4: std::net::Ipv4Addr::from(u32::from_be(r.addr4)).to_string(),
            addr6: bpf::socket_addr(&r.addr6, 0).ip().to_string(),
            port: r.port,
            mark: r.mark,
            heartbeat_ns: r.heartbeat_ns,
        },
        orig_by_cookie: dp
            .cookie_entries()
            .into_iter()
            .map(|(cookie, o)| api::CookieEntry {
                socket_cookie: cookie,
                destination: bpf::original_addr(&o).to_string(),
                netns_cookie: o.netns_cookie,
                pod_id: o.pod_id,
            })
            .collect(),
        orig_by_conn: dp
            .conn_entries()
            .into_iter()
            .map(|(k, o)| api::ConnEntry {
                client: bpf::socket_addr(&k.client_addr, k.client_port).to_string(),
                router: bpf::socket_addr(&k.router_addr, k.router_port).to_string(),
                destination: bpf::original_addr(&o).to_string(),
                netns_cookie: o.netns_cookie,
            })
            .collect(),
        lane_endpoints,
        stats: bpf_stats(dp.stats()?),
    })
}

/// Streams decisions as NDJSON until the client goes away.
fn trace(state: &AdminState, service: Option<String>, tag: Option<String>) -> Response<Body> {
    let rx = state.router.telemetry.trace.subscribe();
    let events = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => return Some((event, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let wanted = move |e: &api::TraceEvent| {
        let service_ok = service
            .as_ref()
            .is_none_or(|s| e.service == *s || e.service.rsplit('/').next() == Some(s.as_str()));
        let tag_ok = tag
            .as_ref()
            .is_none_or(|t| e.tag.as_deref() == Some(t.as_str()));
        service_ok && tag_ok
    };
    let lines = events
        .filter(move |e| std::future::ready(wanted(e)))
        .map(|e| {
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        });
    // A blank line now and then: a client that went away is noticed (and
    // its subscription dropped) at the next write even when nothing routes.
    let keepalive = futures::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\n"))),
            (),
        ))
    });
    let body = futures::stream::select(lines, keepalive);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(body)));
    if let Ok(v) = "application/x-ndjson".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query("name=default%2Freviews&tag=joint1&flag&x=a+b");
        assert_eq!(q["name"], "default/reviews");
        assert_eq!(q["tag"], "joint1");
        assert_eq!(q["flag"], "");
        assert_eq!(q["x"], "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}

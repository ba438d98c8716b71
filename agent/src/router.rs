//! The router: accepts redirected connections, learns where each was going,
//! and hands it to the HTTP/L4 engine ([`crate::proxy`]) with the routing
//! decisions for that connection.
//!
//! The original destination is laneway's own record of the connection
//! (`sock_ops` keys it by the 4-tuple in `ORIG_BY_CONN`), read straight from
//! the pinned map ([`crate::bpf::ConnOrigins`]): one lookup, with the
//! caller's netns cookie, whichever cgroup the agent runs in. Without a
//! record it asks `SO_ORIGINAL_DST`, as any proxy behind an iptables
//! REDIRECT would (netfilter answers). A connection with neither, or whose
//! destination is no service, is closed: the router is no open relay.

pub mod conns;
pub mod external;

use std::{
    collections::{HashMap, HashSet},
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use laneway_common::SO_ORIGINAL_DST;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tracing::{debug, info, warn};

use crate::{
    admin::{
        api::TraceEvent,
        metrics::{Metrics, RequestLabels, status_class},
    },
    bpf::{self, ConnOrigins},
    config::{AppProtocol, UpstreamSource},
    netns::Namespace,
    proxy::{
        self, InFlight, Pools, Protocol, ProxyConfig, RequestOutcome, RequestView, Route, Routed,
        Routes, Target,
    },
    route::{self, Decision, pinning},
    snapshot::{EndpointLoad, Pod, Snapshot},
};

/// The snapshot the router routes by, with what the reconciler learnt
/// applying it (which netns cookie is which pod).
#[derive(Debug)]
pub struct Applied {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Pod index by netns cookie, for the pods that were enrolled.
    pub pods_by_cookie: HashMap<u64, usize>,
    /// The enrolled pods' network namespaces, open, by pod index: the
    /// router makes their upstream sockets there.
    pub netns: HashMap<usize, Arc<Namespace>>,
    /// Pods that should be enrolled and are not: `(namespace/name, reason)`.
    pub unenrolled: Vec<(String, String)>,
}

impl Applied {
    /// The calling pod, by netns cookie (socket mode) or by source IP.
    pub fn caller(&self, netns_cookie: Option<u64>, peer: IpAddr) -> Option<&Pod> {
        self.caller_index(netns_cookie, peer)
            .map(|i| &self.snapshot.pods[i])
    }

    /// The calling pod's index in the snapshot (see [`Applied::caller`]).
    fn caller_index(&self, netns_cookie: Option<u64>, peer: IpAddr) -> Option<usize> {
        let by_cookie = netns_cookie.and_then(|c| self.pods_by_cookie.get(&c));
        let by_ip = || self.snapshot.pods_by_ip.get(&canonical(peer));
        by_cookie.or_else(by_ip).copied()
    }
}

/// The router's shared state.
pub struct Router {
    applied: ArcSwap<Applied>,
    /// laneway's records of redirected connections (none: the router runs
    /// behind an iptables REDIRECT, as in the benchmark's baseline).
    origins: Option<ConnOrigins>,
    pools: Arc<Pools>,
    proxy: Arc<ProxyConfig>,
    /// What the router tells the admin API.
    pub telemetry: Arc<Telemetry>,
    /// Notified on every new state, so new external endpoints are probed
    /// at once ([`external::check`]).
    external_changed: tokio::sync::Notify,
}

/// Metrics, live decisions and open connections.
#[derive(Debug)]
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Every routing decision as it completes (for `laneway trace`); sent
    /// only while someone listens.
    pub trace: broadcast::Sender<TraceEvent>,
    /// Open client connections.
    pub conns: Arc<conns::ConnTable>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            metrics: Metrics::default(),
            trace: broadcast::channel(1024).0,
            conns: Arc::default(),
        }
    }
}

/// Where a redirected connection was going, and who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The VIP:port the app dialled.
    pub destination: SocketAddr,
    /// The calling pod's netns cookie (known in socket mode).
    pub netns_cookie: Option<u64>,
}

impl Router {
    /// A router over an initial state, reading original destinations
    /// from `origins` (else from `SO_ORIGINAL_DST` only).
    pub fn new(applied: Applied, proxy: ProxyConfig, origins: Option<ConnOrigins>) -> Arc<Self> {
        let telemetry = Arc::new(Telemetry::default());
        telemetry.metrics.known_services(service_ids(&applied));
        let pools = Arc::new(Pools::new(&proxy));
        pools.update(eligible_endpoints(&applied), callers(&applied));
        Arc::new(Self {
            applied: ArcSwap::from_pointee(applied),
            origins,
            pools,
            proxy: Arc::new(proxy),
            telemetry,
            external_changed: tokio::sync::Notify::new(),
        })
    }

    /// Swaps in a new state; connections pick it up at their next request.
    /// Upstream connections to endpoints that can no longer take requests
    /// (terminating, not serving, removed) are not reused, nor those of pods
    /// no longer enrolled (their idle ones close now, with the pods'
    /// namespaces).
    pub fn swap(&self, applied: Applied) {
        let (eligible, callers) = (eligible_endpoints(&applied), callers(&applied));
        self.telemetry.metrics.known_services(service_ids(&applied));
        self.applied.store(Arc::new(applied));
        self.pools.update(eligible, callers);
        self.external_changed.notify_one();
    }

    /// Starts draining: each client connection closes after its current
    /// request (`Connection: close`), idle ones at once.
    pub fn begin_drain(&self) {
        self.pools.begin_drain();
    }

    /// The current state.
    pub fn applied(&self) -> Arc<Applied> {
        self.applied.load_full()
    }

    /// Accepts connections until the listener fails. On a `transparent`
    /// listener (TC mode) a connection's local address is the VIP:port the
    /// pod dialled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, transparent: bool) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let router = self.clone();
                    let accepted = self.telemetry.conns.accepted();
                    tokio::spawn(async move {
                        router.handle(stream, peer, transparent).await;
                        drop(accepted);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, transparent: bool) {
        let origin = match transparent {
            true => stream.local_addr().ok().map(|local| Origin {
                destination: SocketAddr::new(canonical(local.ip()), local.port()),
                netns_cookie: None,
            }),
            false => original_destination(&stream, peer, self.origins.as_ref()),
        };
        let Some(origin) = origin else {
            debug!(%peer, "connection without an original destination: closed (not a relay)");
            return;
        };
        let applied = self.applied();
        let Some(port) = applied.snapshot.port_for(origin.destination) else {
            debug!(%peer, destination = %origin.destination, "destination is no service: closed");
            return;
        };
        let protocol = match port.protocol {
            AppProtocol::Auto => Protocol::Sniff,
            AppProtocol::Http => Protocol::Http,
            AppProtocol::Http2 => Protocol::Http2,
            AppProtocol::Tcp => Protocol::Opaque,
        };
        let caller_index = applied.caller_index(origin.netns_cookie, peer.ip());
        let caller = caller_index.map(|i| applied.snapshot.pods[i].to_string());
        // An enrolled pod's upstream connections come from its namespace.
        let upstream_caller = match self.proxy.upstream_source {
            UpstreamSource::Pod => caller_index
                .and_then(|i| applied.netns.get(&i))
                .map(|netns| netns.cookie),
            UpstreamSource::Node => None,
        };
        let service = applied.snapshot.service_of(port).id.to_string();
        debug!(%peer, destination = %origin.destination, %service, caller, "redirected connection");
        let registration = self.telemetry.conns.register(conns::NewConn {
            fd: stream.as_raw_fd(),
            peer,
            local: stream.local_addr().unwrap_or(origin.destination),
            destination: origin.destination,
            caller: caller.clone(),
            service: Some(service),
        });
        let routes = Arc::new(ConnRoutes {
            router: self.clone(),
            origin,
            peer: peer.ip(),
            caller: caller.map(Arc::from),
            conn: registration.entry.clone(),
        });
        drop(applied);
        proxy::serve_connection(
            stream,
            routes,
            self.pools.of(upstream_caller),
            self.proxy.clone(),
            protocol,
        )
        .await;
        drop(registration);
    }
}

/// The endpoints of a state that may take new requests.
fn eligible_endpoints(applied: &Applied) -> HashSet<SocketAddr> {
    applied
        .snapshot
        .ports
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter(|b| b.eligible())
        .map(|b| b.addr)
        .collect()
}

/// The enrolled pods' namespaces of a state, by netns cookie.
fn callers(applied: &Applied) -> HashMap<u64, Arc<Namespace>> {
    applied
        .netns
        .values()
        .map(|netns| (netns.cookie, netns.clone()))
        .collect()
}

/// `namespace/name` of every service of a state.
fn service_ids(applied: &Applied) -> impl Iterator<Item = String> + '_ {
    applied.snapshot.services.iter().map(|s| s.id.to_string())
}

/// IPv4-mapped IPv6 addresses as IPv4, so one map key fits both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The routing decisions for one connection: the engine calls it per request
/// (HTTP/2: per stream, concurrently).
struct ConnRoutes {
    router: Arc<Router>,
    origin: Origin,
    peer: IpAddr,
    /// `namespace/name` of the calling pod, if known.
    caller: Option<Arc<str>>,
    /// This connection's entry in the connection table.
    conn: Arc<conns::ConnEntry>,
}

/// The labels of one routing decision.
struct Labels {
    service: String,
    tag: Option<String>,
    /// The `tag` metric label: bounded by the configuration, not the client
    /// (see [`crate::snapshot::Service::metric_tag`]).
    metric_tag: String,
    tag_source: String,
    decision: Option<Decision>,
    /// The endpoint picked is outside the cluster (an external lane's).
    external: bool,
}

/// One routed request in flight: holds one in-flight count on its endpoint
/// (released on drop) and one open stream on its connection.
struct RoutedRequest {
    router: Arc<Router>,
    caller: Option<Arc<str>>,
    labels: Option<Labels>,
    load: Option<Arc<EndpointLoad>>,
    /// Counts it among the connection's open streams until dropped.
    _open: Option<conns::OpenStream>,
}

impl Drop for RoutedRequest {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            load.in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl InFlight for RoutedRequest {
    fn finish(self: Box<Self>, outcome: RequestOutcome) {
        if let Some(load) = &self.load
            && outcome.target.is_some()
        {
            if outcome.is_failure() {
                let outlier = self.router.applied.load().snapshot.outlier;
                if load.record_failure(&outlier) {
                    warn!(endpoint = ?outcome.target.as_ref().map(|t| t.endpoint), "endpoint ejected after consecutive failures");
                }
            } else if outcome.status >= 100 {
                load.record_success();
            }
        }
        report(
            &self.router,
            self.caller.as_deref(),
            self.labels.as_ref(),
            outcome,
        );
    }
}

impl RoutedRequest {
    /// A request decided with `labels`, forwarded to the endpoint of
    /// `load` (counted in flight there) and `open` on the connection.
    fn new(
        routes: &ConnRoutes,
        labels: Option<Labels>,
        load: Option<Arc<EndpointLoad>>,
        open: Option<conns::OpenStream>,
    ) -> Box<Self> {
        if let Some(load) = &load {
            load.in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Box::new(Self {
            router: routes.router.clone(),
            caller: routes.caller.clone(),
            labels,
            load,
            _open: open,
        })
    }
}

/// Metrics, log and trace event of a finished request.
fn report(router: &Router, caller: Option<&str>, labels: Option<&Labels>, outcome: RequestOutcome) {
    let telemetry = &router.telemetry;
    if let Some(c) = labels {
        let decision = c.decision.map_or("none", Decision::as_str);
        if c.decision == Some(Decision::Denied) {
            telemetry.metrics.denied(&c.service);
        }
        telemetry.metrics.request(
            RequestLabels {
                service: c.service.clone(),
                tag: c.metric_tag.clone(),
                decision: decision.to_owned(),
                status_class: status_class(outcome.status),
            },
            // How long a stream stays open says nothing of latency.
            (outcome.status != proxy::STATUS_L4).then_some(outcome.duration),
        );
        if let Some(code) = outcome.grpc_status {
            telemetry
                .metrics
                .grpc_response(&c.service, &c.metric_tag, code);
        }
    }
    debug!(
        status = outcome.status,
        grpc_status = outcome.grpc_status,
        by_router = outcome.by_router,
        endpoint = outcome.target.as_ref().map(|t| t.endpoint.to_string()),
        duration_us = outcome.duration.as_micros() as u64,
        error = outcome.error,
        "request done"
    );
    if telemetry.trace.receiver_count() > 0 {
        let _ = telemetry.trace.send(TraceEvent {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            caller: caller.map(str::to_owned),
            service: labels.map(|c| c.service.clone()).unwrap_or_default(),
            tag: labels.and_then(|c| c.tag.clone()),
            tag_source: labels.map_or_else(|| "none".to_owned(), |c| c.tag_source.clone()),
            decision: labels
                .and_then(|c| c.decision)
                .map(|d| d.as_str().to_owned()),
            endpoint: outcome.target.map(|t| t.endpoint.to_string()),
            external: labels.is_some_and(|c| c.external),
            status: outcome.status,
            grpc_status: outcome.grpc_status,
            duration_us: outcome.duration.as_micros() as u64,
            error: outcome.error,
        });
    }
}

impl ConnRoutes {
    fn decide(&self, request: Option<&RequestView<'_>>, exclude: &[SocketAddr]) -> Routed {
        let explain = request.is_some_and(|r| r.header(ROUTE_HEADER).is_some());
        let (headers, path, protocol) =
            request.map_or((&[][..], "/", "tcp"), |r| (r.headers, r.path, r.protocol));
        let applied = self.router.applied.load();
        let Some(port) = applied.snapshot.port_for(self.origin.destination) else {
            return Routed {
                route: unavailable(
                    format!(
                        "laneway: no service at {} any more\n",
                        self.origin.destination
                    ),
                    explain.then(|| route_header(None, &"-", None, None)),
                ),
                request: RoutedRequest::new(self, None, None, None),
            };
        };
        let service = applied.snapshot.service_of(port);
        let caller = applied.caller(self.origin.netns_cookie, self.peer);
        if let Some(denied) = self.refuse_caller(service, caller, explain) {
            return denied;
        }
        if let Some(failed) = exclude.last() {
            // Asked again for the same request only after a failed connect.
            self.connect_failed(service, port, *failed, &applied.snapshot.outlier);
        }
        let plan = route::plan(
            port,
            &service.policy,
            headers,
            path,
            caller.and_then(|p| p.tag.as_ref()),
            &applied.snapshot.tags,
            rand::random(),
            caller.is_some() || !applied.snapshot.tags.strip_from_unknown_callers,
        );
        let tag_name = plan.tag.as_ref().map(|t| t.to_string());
        let pin = pinning::pinned(port, &service.id, service.policy.endpoint_pinning, headers);
        let pinned_index;
        let (decision, candidates) = match &pin {
            Some(Ok(i)) => {
                pinned_index = *i;
                (Decision::Pinned, std::slice::from_ref(&pinned_index))
            }
            Some(Err(_)) => (Decision::Pinned, &[][..]),
            None => (plan.decision, plan.candidates),
        };
        let mut labels = Labels {
            service: service.id.to_string(),
            tag: tag_name.clone(),
            metric_tag: service.metric_tag(plan.tag.as_ref()),
            tag_source: plan.source.to_string(),
            decision: Some(decision),
            external: false,
        };
        let explained = |decision, endpoint| {
            explain.then(|| route_header(decision, &service.id, plan.tag.as_ref(), endpoint))
        };
        let refusal = refusal(&pin, plan.tag.as_ref(), decision, service);
        if let Some(body) = refusal {
            return Routed {
                route: unavailable(body, explained(Some(decision), None)),
                request: RoutedRequest::new(self, Some(labels), None, None),
            };
        }
        let picked = route::pick(
            port,
            candidates,
            exclude,
            service.policy.warmup,
            applied.snapshot.outlier.max_ejection_percent,
            &mut rand::rng(),
        );
        let Some(backend) = picked else {
            labels.decision = None;
            let err = route::NoEndpoint::Empty {
                service: service.id.to_string(),
                tag: plan.tag.clone(),
            };
            return Routed {
                route: unavailable(format!("laneway: {err}\n"), explained(None, None)),
                request: RoutedRequest::new(self, Some(labels), None, None),
            };
        };
        labels.external = backend.external;
        let open = self.conn.routed(backend.addr, tag_name.clone(), protocol);
        let request =
            RoutedRequest::new(self, Some(labels), Some(backend.load.clone()), Some(open));
        if decision == Decision::Pinned {
            info!(
                service = %service.id,
                caller = self.caller.as_deref().unwrap_or("-"),
                endpoint = %backend.addr,
                name = backend.name.as_deref().unwrap_or("-"),
                "pinned request"
            );
        }
        debug!(
            service = %service.id,
            tag = tag_name,
            source = %plan.source,
            %decision,
            endpoint = %backend.addr,
            "routed"
        );
        let route = Route::Forward(Target {
            endpoint: backend.addr,
            tag_header: applied.snapshot.tags.upstream_header().to_owned(),
            baggage: route::propagated_baggage(
                headers.iter().copied(),
                &applied.snapshot.tags.baggage_key,
                plan.tag.as_ref(),
            ),
            tag: tag_name,
            route_header: explained(Some(decision), Some(backend.addr)),
        });
        Routed { route, request }
    }

    /// The 403 (L4: reset) for a caller the service's `allow-from` rule
    /// refuses; `None` when it may call.
    fn refuse_caller(
        &self,
        service: &crate::snapshot::Service,
        caller: Option<&Pod>,
        explain: bool,
    ) -> Option<Routed> {
        let rule = service.policy.allow_from.as_ref()?;
        let denial = rule.check(caller).err()?;
        let who = caller.map_or_else(|| self.peer.to_string(), |p| p.to_string());
        let message = denial.message(&who, &service.id.to_string(), rule);
        debug!(service = %service.id, caller = who, %message, "denied");
        let labels = Labels {
            service: service.id.to_string(),
            tag: None,
            metric_tag: service.metric_tag(None),
            tag_source: route::TagSource::None.to_string(),
            decision: Some(Decision::Denied),
            external: false,
        };
        Some(Routed {
            route: Route::Reject {
                status: proxy::STATUS_FORBIDDEN,
                body: format!("{message}\n"),
                route_header: explain
                    .then(|| route_header(Some(Decision::Denied), &service.id, None, None)),
            },
            request: RoutedRequest::new(self, Some(labels), None, None),
        })
    }

    /// Counts a failed connect to `failed`: towards its ejection, or, for an
    /// external endpoint, as a failed health check. A refused connect is as
    /// good a check as a probe's: the lane is down now, not at the next
    /// probe (which brings it back when the endpoint answers again).
    fn connect_failed(
        &self,
        service: &crate::snapshot::Service,
        port: &crate::snapshot::ServicePort,
        failed: SocketAddr,
        outlier: &crate::snapshot::OutlierRules,
    ) {
        self.router
            .telemetry
            .metrics
            .connect_error(&service.id.to_string());
        let Some(b) = port.backends.iter().find(|b| b.addr == failed) else {
            return;
        };
        if b.external {
            if b.load.set_reachable(false) {
                warn!(service = %service.id, endpoint = %failed, "external endpoint does not answer");
            }
        } else if b.load.record_failure(outlier) {
            warn!(service = %service.id, endpoint = %failed, "endpoint ejected after consecutive failures");
        }
    }
}

/// The body of the router's 503 when the plan refuses the request: a pin
/// to an endpoint that takes no requests, or a strict lane with none
/// (naming the address when the lane is served from outside the cluster).
fn refusal(
    pin: &Option<Result<usize, pinning::Error>>,
    tag: Option<&crate::config::Tag>,
    decision: Decision,
    service: &crate::snapshot::Service,
) -> Option<String> {
    match (pin, tag) {
        (Some(Err(e)), _) => Some(format!("laneway: {e}\n")),
        (None, Some(tag)) if decision == Decision::StrictReject => {
            Some(match service.policy.external_lanes.of(tag) {
                [] => format!(
                    "laneway: lane {tag} of service {} has no serving endpoint, and the lane is strict\n",
                    service.id
                ),
                addrs => crate::policy::external::down_message(&service.id, tag, addrs),
            })
        }
        _ => None,
    }
}

/// The router's own `503` with `body` (and `x-laneway-route` when asked).
fn unavailable(body: String, route_header: Option<String>) -> Route {
    Route::Reject {
        status: 503,
        body,
        route_header,
    }
}

/// The `x-laneway-route` value: `decision=tagged; service=ns/name; tag=joint1; endpoint=IP:PORT`,
/// with `none` for no decision and `-` for no service, tag or endpoint.
fn route_header(
    decision: Option<Decision>,
    service: &dyn std::fmt::Display,
    tag: Option<&crate::config::Tag>,
    endpoint: Option<SocketAddr>,
) -> String {
    let decision = decision.map_or("none", Decision::as_str);
    let tag = tag.map_or("-", |t| t.as_str());
    let endpoint = endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string());
    format!("decision={decision}; service={service}; tag={tag}; endpoint={endpoint}")
}

/// The request header that asks for `x-laneway-route` on the response.
pub const ROUTE_HEADER: &str = "x-laneway-route";

impl Routes for ConnRoutes {
    fn route_http(&self, request: &RequestView<'_>, exclude: &[SocketAddr]) -> Routed {
        self.decide(Some(request), exclude)
    }

    fn route_l4(&self, exclude: &[SocketAddr]) -> Routed {
        // Opaque streams carry no header: the caller's lane, else base.
        self.decide(None, exclude)
    }

    fn observe_unrouted(&self, outcome: RequestOutcome) {
        report(&self.router, self.caller.as_deref(), None, outcome);
    }

    fn serving(&self, protocol: &'static str) {
        self.conn.serving(protocol);
    }
}

/// Reads the original destination of a connection accepted from `peer`:
/// laneway's record in `origins` (with the caller's netns cookie) where its
/// programs redirected the connection, else `SO_ORIGINAL_DST`, exactly as
/// behind iptables REDIRECT.
pub fn original_destination(
    stream: &TcpStream,
    peer: SocketAddr,
    origins: Option<&ConnOrigins>,
) -> Option<Origin> {
    let local = stream.local_addr().ok()?;
    let record = origins.and_then(|o| o.get(peer, local));
    if let Some(record) = record {
        let destination = bpf::original_addr(&record);
        return Some(Origin {
            destination: SocketAddr::new(canonical(destination.ip()), destination.port()),
            netns_cookie: Some(record.netns_cookie),
        });
    }
    let fd = stream.as_raw_fd();
    let destination = match local {
        SocketAddr::V4(_) => {
            let sin = getsockopt::<libc::sockaddr_in>(fd, libc::SOL_IP, SO_ORIGINAL_DST)?;
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt::<libc::sockaddr_in6>(fd, libc::SOL_IPV6, SO_ORIGINAL_DST)?;
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            SocketAddr::new(canonical(IpAddr::V6(ip)), u16::from_be(sin6.sin6_port))
        }
    };
    Some(Origin {
        destination,
        netns_cookie: None,
    })
}

/// `getsockopt` for a plain-data option value of exactly `T`'s size.
fn getsockopt<T: Copy>(fd: i32, level: i32, name: i32) -> Option<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value is writable for len bytes; the kernel writes at most len.
    let rc = unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) };
    if rc != 0 || len as usize != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: zero-initialised plain data, fully written by the kernel.
    Some(unsafe { value.assume_init() })
}

#[cfg(test)]
mod tests;

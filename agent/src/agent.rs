//! The agent daemon: wires the config, the kernel programs and the router
//! together, keeps them in step when the config changes, and shuts down
//! cleanly on SIGTERM.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use laneway_common::{PodValue, ServiceValue};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    admin::{AdminState, Health},
    bpf::{self, Datapath},
    cgroup,
    config::{self, Config, RedirectMode},
    kernel_lanes::KernelLanes,
    netns,
    proxy::ProxyConfig,
    router::{Applied, Router},
    snapshot::Snapshot,
};

/// How often the router tells the programs it is alive. Well under the
/// programs' timeout, so a busy moment never trips fail-open.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// How often the config file is checked for changes.
const RELOAD_POLL: Duration = Duration::from_millis(500);
/// How often TC mode checks that each pod's veth still has the program (a
/// recreated veth has a new ifindex and none).
const RELINK_EVERY: Duration = Duration::from_millis(500);

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad config.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// No cgroup v2.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// The configured cgroup is not a cgroup v2 directory.
    #[error(
        "{0} is not a cgroup v2 directory (no cgroup.procs): set bpf.cgroup or --cgroup to one"
    )]
    NotACgroup(PathBuf),
    /// The kernel side failed.
    #[error(transparent)]
    Bpf(#[from] bpf::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The router's redirect address has the wrong family.
    #[error("router.{field} must be an {family} address, got {addr}")]
    RedirectFamily {
        /// Which field.
        field: &'static str,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The value.
        addr: IpAddr,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The Kubernetes source failed to start.
    #[error(transparent)]
    Kube(#[from] crate::kube::Error),
    /// `--kube` with services or pods in the file.
    #[error(
        "with --kube, services and pods come from the Kubernetes API: remove `services:` and `pods:` from {0}"
    )]
    KubeWithStatic(PathBuf),
    /// TC mode's node setup failed.
    #[error("TC mode: {0}")]
    Tproxy(#[source] crate::tproxy::Error),
    /// The admin socket could not be served.
    #[error(transparent)]
    Admin(#[from] crate::admin::Error),
    /// The ready file could not be written.
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the agent is started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The config file (also the source of truth in standalone mode).
    pub config: PathBuf,
    /// Overrides `bpf.cgroup`.
    pub cgroup: Option<PathBuf>,
    /// Written once the agent routes (for supervisors and tests).
    pub ready_file: Option<PathBuf>,
    /// Take services, endpoints and pods from the Kubernetes API instead of
    /// the file (which then holds only settings).
    pub kube: bool,
    /// Kubeconfig for `kube` (default: in-cluster, then `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (`kube` enrols only its pods).
    pub node_name: Option<String>,
    /// Overrides `router.redirect_ipv4` (a DaemonSet passes the node IP).
    pub redirect_ipv4: Option<IpAddr>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<(), Error> {
    let mut config = Config::load(&options.config)?;
    if let Some(ip) = options.redirect_ipv4 {
        config.router.redirect_ipv4 = ip;
    }
    if options.kube && (!config.services.is_empty() || !config.pods.is_empty()) {
        return Err(Error::KubeWithStatic(options.config.clone()));
    }
    let kube_client = match options.kube {
        true => {
            let node = options
                .node_name
                .clone()
                .ok_or(crate::kube::Error::NoNodeName)?;
            Some((
                crate::kube::client(options.kubeconfig.as_deref()).await?,
                node,
            ))
        }
        false => None,
    };
    let cgroup = match options.cgroup.clone().or(config.bpf.cgroup.clone()) {
        Some(dir) => dir,
        None => cgroup::v2_root()?,
    };
    if !cgroup::is_cgroup_dir(&cgroup) {
        return Err(Error::NotACgroup(cgroup));
    }
    let (redirect4, redirect6) = redirect_addrs(&config)?;

    allow_listener_migration();
    // Listen before attaching: a redirected connect must find a listener.
    let mut listeners = vec![bind(config.router.listen)?];
    if let Some(v6) = config.router.listen_v6 {
        listeners.push(bind(v6)?);
    }
    let admin = config.admin.listen.map(bind).transpose()?;
    let port = config.router.listen.port();

    let mut datapath = Datapath::attach(&cgroup, &config.bpf.pin_path)?;
    datapath.set_tc_attach(config.bpf.tc_attach);
    datapath.set_listeners(&listeners[0], listeners.get(1))?;
    let transparent = match config.router.mode.tc() {
        true => {
            crate::tproxy::route_marked_packets_locally().map_err(Error::Tproxy)?;
            let addr = config.router.tproxy_listen;
            let listener = match crate::tproxy::bind(addr) {
                Ok(listener) => listener,
                // An agent still running here (an overlapping restart):
                // share its listener, as the other listeners share their
                // port, before it hands over.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    let socket = config.admin.socket.clone();
                    let inherited =
                        tokio::task::spawn_blocking(move || crate::tproxy::inherit(&socket))
                            .await
                            .map_err(|e| {
                                Error::Tproxy(crate::tproxy::Error::Inherit {
                                    message: e.to_string(),
                                })
                            })?
                            .map_err(Error::Tproxy)?;
                    info!(%addr, "sharing the running agent's transparent listener");
                    TcpListener::from_std(inherited)
                        .map_err(|source| Error::Listen { addr, source })?
                }
                Err(source) => return Err(Error::Listen { addr, source }),
            };
            datapath.set_tc_listener(&listener)?;
            Some(listener)
        }
        false => None,
    };
    info!(cgroup = %cgroup.display(), programs = ?Datapath::program_names().collect::<Vec<_>>(), "programs attached");
    let source = match &kube_client {
        Some(_) => "kubernetes".to_owned(),
        None => format!("file:{}", options.config.display()),
    };
    // The file source routes from the start; the Kubernetes source starts
    // empty (nothing redirected) until its first full sync.
    let first = match kube_client {
        Some(_) => {
            let mut settings_only = config.clone();
            settings_only.services.clear();
            settings_only.pods.clear();
            settings_only
        }
        None => config.clone(),
    };
    let applied = apply(
        &mut datapath,
        Snapshot::from_config(&first, source.clone(), None, true),
        Vec::new(),
        config.router.mode,
    )?;
    let router = Router::new(applied, proxy_config(&config));
    router.telemetry.metrics.snapshot_applied();
    let mut accepting: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(router.clone().serve(listener, false)))
        .collect();
    let transparent_fd = transparent.as_ref().map(|l| {
        use std::os::fd::AsRawFd;
        l.as_raw_fd()
    });
    if let Some(listener) = transparent {
        accepting.push(tokio::spawn(router.clone().serve(listener, true)));
    }
    let health = Arc::new(Health::default());
    let mark = config.router.socket_mark;
    let datapath = Arc::new(Mutex::new(datapath));
    let (handover_tx, mut handover) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        router: router.clone(),
        datapath: datapath.clone(),
        health: health.clone(),
        config: arc_swap::ArcSwap::from_pointee(config.clone()),
        mode: match config.router.mode {
            RedirectMode::Socket => "socket",
            RedirectMode::Tc => "tc",
            RedirectMode::Both => "both",
        },
        listen: std::iter::once(config.router.listen)
            .chain(config.router.listen_v6)
            .collect(),
        handover: handover_tx,
        transparent_fd,
    });
    let entry = RouterEntry {
        redirect4,
        redirect6,
        port,
        mark,
    };
    entry.beat(&datapath, bpf::monotonic_ns())?;
    // An agent still running here (an overlapping restart) hands over: it
    // drains while this one serves, on the same port (SO_REUSEPORT).
    if crate::admin::take_over(&config.admin.socket).await {
        info!("took over from the agent that was running; it drains now");
    }
    let admin_socket = crate::admin::serve_unix(&config.admin.socket, admin_state.clone())?;
    if let Some(listener) = admin {
        tokio::spawn(crate::admin::serve_http(listener, admin_state.clone()));
    }
    let heartbeat = tokio::spawn(heartbeat_loop(datapath.clone(), entry));
    tokio::spawn(crate::memory::trim_after_spikes(
        router.telemetry.conns.clone(),
    ));
    info!(listen = %config.router.listen, redirect = %config.router.redirect_ipv4, %source, "router up");

    let reconciler = Reconciler {
        mode: config.router.mode,
        router: router.clone(),
        datapath: datapath.clone(),
        source,
        health,
        ready_file: options.ready_file.clone(),
        last: Mutex::new(Some(LastInput {
            config: first,
            unenrolled: Vec::new(),
            policy_errors: Vec::new(),
        })),
    };
    let mut relink = tokio::time::interval(RELINK_EVERY);
    let mut hangup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    match kube_client {
        Some((client, node)) => {
            let (tx, mut rx) = watch::channel(None);
            tokio::spawn(crate::kube::run(client, node, config.clone(), tx));
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { break; }
                        let desired = rx.borrow_and_update().clone();
                        if let Some(desired) = desired {
                            reconciler.apply(
                                &desired.config,
                                desired.unenrolled.iter().map(|u| (u.pod.clone(), u.reason.clone())).collect(),
                                &desired.policy_errors,
                            )?;
                        }
                    }
                    _ = relink.tick(), if config.router.mode.tc() => reconciler.relink_or_warn(),
                    _ = hangup.recv() => info!("SIGHUP: with --kube the API is the source; restart to change settings"),
                    _ = handover.changed() => break,
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                }
            }
        }
        None => {
            reconciler.ready()?;
            let mut seen = fingerprint(&options.config);
            let mut poll = tokio::time::interval(RELOAD_POLL);
            loop {
                let reason = tokio::select! {
                    _ = relink.tick(), if config.router.mode.tc() => {
                        reconciler.relink_or_warn();
                        continue;
                    }
                    _ = hangup.recv() => "SIGHUP",
                    _ = poll.tick() => {
                        let now = fingerprint(&options.config);
                        if now == seen { continue; }
                        "file changed"
                    }
                    _ = handover.changed() => break,
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                };
                seen = fingerprint(&options.config);
                if let Some(in_force) = reload(&options.config, &config, &reconciler, reason) {
                    admin_state.config.store(Arc::new(in_force));
                }
            }
        }
    }
    heartbeat.abort();
    admin_socket.abort();
    if *handover.borrow() {
        // The successor serves the admin socket and writes the heartbeat.
        info!("handing over: draining while the new agent serves");
    } else {
        let _ = std::fs::remove_file(&config.admin.socket);
        info!("shutting down: clearing the heartbeat, new connections go the direct way from now");
        // Fail open at once rather than after the timeout.
        if let Err(e) = entry.beat(&datapath, 0) {
            warn!(error = %e, "could not clear the heartbeat");
        }
    }
    drain(&router, accepting, config.router.drain_timeout).await;
    Ok(())
}

/// `net.ipv4.tcp_migrate_req=1` in this network namespace: connections
/// queued on a closing listener move to another listener of the same
/// SO_REUSEPORT group instead of being reset (Linux 5.14+). Best effort.
fn allow_listener_migration() {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    if let Err(e) = std::fs::write(KNOB, "1") {
        warn!(error = %e, "cannot set {KNOB}: an overlapping restart may reset connections queued on the old listener");
    }
}

/// How long the router keeps accepting after the heartbeat is cleared:
/// connects that passed the programs just before still find a listener.
const ACCEPT_GRACE: Duration = Duration::from_millis(300);

/// Drains the router: stops taking connections, lets in-flight requests
/// finish (each client connection closes after its current request), and
/// returns when none is left or `timeout` passed.
async fn drain(router: &Router, accepting: Vec<tokio::task::JoinHandle<()>>, timeout: Duration) {
    router.begin_drain();
    tokio::time::sleep(ACCEPT_GRACE).await;
    for task in accepting {
        task.abort();
    }
    let conns = &router.telemetry.conns;
    let deadline = tokio::time::Instant::now() + timeout;
    info!(open = conns.len(), ?timeout, "draining client connections");
    while !conns.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match conns.len() {
        0 => info!("drained: every client connection finished"),
        open => warn!(open, "drain timeout: closing the remaining connections"),
    }
}

/// Applies snapshots to the maps and the router, and says when the agent is
/// ready.
struct Reconciler {
    mode: RedirectMode,
    router: Arc<Router>,
    datapath: Arc<Mutex<Datapath>>,
    source: String,
    health: Arc<Health>,
    ready_file: Option<PathBuf>,
    /// The last input applied, for [`Reconciler::relink`].
    last: Mutex<Option<LastInput>>,
}

/// What [`Reconciler::apply`] was last given.
#[derive(Clone)]
struct LastInput {
    config: Config,
    unenrolled: Vec<(String, String)>,
    policy_errors: Vec<(String, String)>,
}

impl Reconciler {
    /// Builds the snapshot of `config`, writes it to the maps, swaps it into
    /// the router; the first time, marks the agent ready.
    fn apply(
        &self,
        config: &Config,
        unenrolled: Vec<(String, String)>,
        policy_errors: &[(String, String)],
    ) -> Result<(), Error> {
        let previous = self.router.applied();
        let mut snapshot = Snapshot::from_config(
            config,
            self.source.clone(),
            Some(&previous.snapshot),
            !self.health.is_ready(),
        );
        for (service, error) in policy_errors {
            if let Some(s) = snapshot
                .services
                .iter_mut()
                .find(|s| s.id.to_string() == *service)
            {
                s.policy_error = Some(error.clone());
            }
            self.router.telemetry.metrics.policy_error(service);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastInput {
            config: config.clone(),
            unenrolled: unenrolled.clone(),
            policy_errors: policy_errors.to_vec(),
        });
        let applied = {
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            apply(&mut dp, snapshot, unenrolled, self.mode)?
        };
        self.router.swap(applied);
        self.router.telemetry.metrics.snapshot_applied();
        if !self.health.is_ready() {
            self.ready()?;
        }
        Ok(())
    }

    /// TC mode: applies the last input again when a pod's veth was
    /// recreated, appeared or went away, so the program follows the veth.
    /// Cheap when nothing changed (one `if_nametoindex` per pod).
    fn relink(&self) -> Result<(), Error> {
        let applied = self.router.applied();
        let wanted = applied
            .snapshot
            .pods
            .iter()
            .filter_map(|p| p.interface.as_deref());
        let current = self
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tc_links_current(wanted);
        if current {
            return Ok(());
        }
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(last) = last else {
            return Ok(());
        };
        info!("a pod's veth was recreated, appeared or went away: attaching the TC program again");
        self.apply(&last.config, last.unenrolled, &last.policy_errors)
    }

    fn relink_or_warn(&self) {
        if let Err(e) = self.relink() {
            warn!(error = %e, "attaching the TC program to a changed veth failed; retrying");
        }
    }

    fn ready(&self) -> Result<(), Error> {
        self.health.set_ready();
        info!(source = %self.source, "laneway agent ready");
        if let Some(path) = &self.ready_file {
            std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
                Error::ReadyFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

fn redirect_addrs(
    config: &Config,
) -> Result<(Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>), Error> {
    let v4 = match config.router.redirect_ipv4 {
        IpAddr::V4(v4) => v4,
        addr => {
            return Err(Error::RedirectFamily {
                field: "redirect_ipv4",
                family: "IPv4",
                addr,
            });
        }
    };
    let v6 = match config.router.redirect_ipv6 {
        None => None,
        Some(IpAddr::V6(v6)) => Some(v6),
        Some(addr) => {
            return Err(Error::RedirectFamily {
                field: "redirect_ipv6",
                family: "IPv6",
                addr,
            });
        }
    };
    Ok((Some(v4), v6))
}

fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        // An overlapping restart binds the same port: the kernel spreads new
        // connections over both, and (with tcp_migrate_req) moves those
        // queued on the old listener to the new one when it closes.
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    listen().map_err(|source| Error::Listen { addr, source })
}

/// The engine's settings from the config.
pub fn proxy_config(config: &Config) -> ProxyConfig {
    let r = &config.router;
    ProxyConfig {
        max_header_bytes: r.max_header_bytes,
        header_timeout: r.header_timeout,
        idle_timeout: r.idle_timeout,
        connect_timeout: r.connect_timeout,
        response_timeout: r.response_timeout,
        sniff_timeout: r.sniff_timeout,
        pool_max_idle_per_endpoint: r.pool_max_idle_per_endpoint,
        pool_idle_timeout: r.pool_idle_timeout,
        socket_mark: r.socket_mark,
        tag_header: config.primary_tag_header().to_owned(),
        retry_idempotent: r.retry_idempotent,
    }
}

/// Writes a snapshot to the maps (resolving each pod's netns cookie) and
/// returns what the router needs.
fn apply(
    datapath: &mut Datapath,
    snapshot: Snapshot,
    mut unenrolled: Vec<(String, String)>,
    mode: RedirectMode,
) -> Result<Applied, Error> {
    let own_netns = netns::socket_cookie_here().ok();
    let mut services = HashMap::new();
    for port in &snapshot.ports {
        for vip in &snapshot.services[port.service].vips {
            services.insert(
                bpf::service_key(*vip, port.port),
                ServiceValue {
                    service_id: port.service as u32,
                    flags: 0,
                },
            );
        }
    }
    let mut enrolled = HashMap::new();
    let mut pods_by_cookie = HashMap::new();
    for (index, pod) in snapshot.pods.iter().enumerate() {
        match netns::cookie_of(&pod.netns) {
            Ok(cookie) if Some(cookie) == own_netns => {
                let reason = "its network namespace is the agent's own: redirecting it would loop the router";
                error!(%pod, netns = %pod.netns.display(), "not enrolled: {reason}");
                unenrolled.push((pod.to_string(), reason.to_owned()));
            }
            Ok(cookie) => {
                if mode.socket() {
                    enrolled.insert(
                        cookie,
                        PodValue {
                            pod_id: index as u32,
                            lane: laneway_common::BASE_LANE,
                        },
                    );
                }
                pods_by_cookie.insert(cookie, index);
            }
            Err(e) => {
                warn!(%pod, error = %e, "not enrolled: network namespace not usable");
                unenrolled.push((pod.to_string(), e.to_string()));
            }
        }
    }
    let mut tc_enrolled = HashMap::new();
    let mut tc_interfaces = std::collections::HashSet::new();
    if mode.tc() {
        for (index, pod) in snapshot.pods.iter().enumerate() {
            let Some(interface) = &pod.interface else {
                unenrolled.push((
                    pod.to_string(),
                    "TC mode needs the pod's host-side interface".into(),
                ));
                continue;
            };
            let attached = nix::net::if_::if_nametoindex(interface.as_str())
                .map_err(|e| format!("interface {interface}: {e}"))
                .and_then(|ifindex| {
                    datapath
                        .attach_tc(interface, ifindex)
                        .map_err(|e| e.to_string())?;
                    Ok(ifindex)
                });
            match attached {
                Ok(ifindex) => {
                    tc_interfaces.insert(interface.as_str());
                    tc_enrolled.insert(
                        ifindex,
                        PodValue {
                            pod_id: index as u32,
                            lane: laneway_common::BASE_LANE,
                        },
                    );
                }
                Err(reason) => {
                    warn!(%pod, %reason, "not enrolled in TC mode");
                    unenrolled.push((pod.to_string(), reason));
                }
            }
        }
    }
    // The kernel's own lanes (no live router, `protocol: tcp`): their
    // endpoints first, so the services and pods pointing at them find them.
    let lanes = KernelLanes::new(&snapshot, datapath.lane_ids_mut());
    lanes.annotate(&mut services, &mut enrolled);
    datapath.sync_lane_endpoints(&lanes.endpoints)?;
    // Services first: a newly enrolled pod must find its services in place.
    let s = datapath.sync_services(&services)?;
    let e = datapath.sync_enrolled(&enrolled)?;
    datapath.sync_tc_enrolled(&tc_enrolled)?;
    // Veths of pods that left, or that are gone, lose the program.
    datapath.detach_tc_except(&tc_interfaces);
    info!(
        source = %snapshot.source,
        services = snapshot.services.len(),
        service_ports = services.len(),
        pods_enrolled = enrolled.len(),
        pods_wanted = snapshot.pods.len(),
        map_writes = s.written + e.written,
        map_removals = s.removed + e.removed,
        "snapshot applied"
    );
    Ok(Applied {
        snapshot,
        pods_by_cookie,
        unenrolled,
    })
}

/// Reads the file again and applies its services, pods, tags and policy.
/// Returns the config now in force (the file's, with the running router, bpf,
/// kube and admin settings, which change only at a restart), or `None` when
/// the file was rejected or could not be applied.
fn reload(path: &Path, running: &Config, reconciler: &Reconciler, reason: &str) -> Option<Config> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!(%reason, error = %e, "config reload rejected; still routing by the last good one");
            return None;
        }
    };
    if serde_yaml::to_string(&config.router).ok() != serde_yaml::to_string(&running.router).ok()
        || serde_yaml::to_string(&config.bpf).ok() != serde_yaml::to_string(&running.bpf).ok()
    {
        warn!(
            "router and bpf settings take effect at the next restart; services, pods and tags are reloaded now"
        );
    }
    match reconciler.apply(&config, Vec::new(), &[]) {
        Ok(()) => {
            info!(%reason, "config reloaded");
            Some(Config {
                router: running.router.clone(),
                bpf: running.bpf.clone(),
                kube: running.kube.clone(),
                admin: running.admin.clone(),
                ..config
            })
        }
        Err(e) => {
            error!(%reason, error = %e, "applying the reloaded config failed");
            None
        }
    }
}

/// What the router writes into the programs' `ROUTER` entry.
#[derive(Clone, Copy, Debug)]
struct RouterEntry {
    redirect4: Option<std::net::Ipv4Addr>,
    redirect6: Option<std::net::Ipv6Addr>,
    port: u16,
    mark: u32,
}

impl RouterEntry {
    /// Writes the entry with heartbeat `now_ns` (0: gone, fail open now).
    fn beat(&self, datapath: &Mutex<Datapath>, now_ns: u64) -> Result<(), bpf::Error> {
        let info = bpf::router_info(self.redirect4, self.redirect6, self.port, self.mark, now_ns);
        datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_router(&info)
    }
}

async fn heartbeat_loop(datapath: Arc<Mutex<Datapath>>, entry: RouterEntry) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = entry.beat(&datapath, bpf::monotonic_ns()) {
            error!(error = %e, "heartbeat failed; programs fail open until it recovers");
        }
    }
}

/// What identifies a version of the config file on disk.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

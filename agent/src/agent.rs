//! The agent daemon: wires the config, the kernel programs and the router
//! together, keeps them in step with the source of truth, and shuts down
//! cleanly on SIGTERM.
//!
//! Its parts are modules of their own: the router's [`listeners`], the
//! [`heartbeat`] the programs check, the [`reconcile`]r that applies
//! snapshots, the static [`file_source`], and [`drain`] on the way out.

mod drain;
mod file_source;
mod heartbeat;
mod listeners;
mod reconcile;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::info;

use crate::{
    admin::{AdminState, Health},
    bpf::{self, ConnOrigins, Datapath, RouterMap},
    cgroup,
    config::{self, Config, RedirectMode},
    proxy::ProxyConfig,
    router::Router,
};
use heartbeat::{Heartbeat, RouterEntry, Stop};
use reconcile::{Input, Reconciler};

/// How often the config file is checked for changes.
const RELOAD_POLL: Duration = Duration::from_millis(500);
/// How often TC mode checks that each pod's veth still has the program (a
/// recreated veth has a new ifindex and none).
const RELINK_EVERY: Duration = Duration::from_millis(500);
/// How soon a state that failed to apply, or that could not read some pod's
/// network namespace in time, is tried again.
const RETRY_UNFINISHED: Duration = Duration::from_secs(2);

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
    /// `router.redirect_ipv4: auto` found no address.
    #[error(
        "router.redirect_ipv4 is auto, but no IPv4 route (to a pod, an endpoint or the default \
         route) gives the node's address: set router.redirect_ipv4 (or --redirect-ipv4, \
         LANEWAY_REDIRECT_IPV4) to the node's address as pods reach it"
    )]
    NoRedirectAddress,
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
    /// The first snapshot could not be applied, or the ready file written.
    #[error(transparent)]
    Reconcile(#[from] reconcile::Error),
    /// The heartbeat could not start.
    #[error(transparent)]
    Heartbeat(#[from] heartbeat::Error),
}

/// How the agent is started: `laneway agent`'s options.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// The static config file (router settings, services, pods).
    #[arg(long, short, env = "LANEWAY_CONFIG")]
    pub config: PathBuf,
    /// Cgroup v2 directory to attach the programs to (default: the
    /// cgroup v2 root, i.e. every process on the node).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Write this file (with the agent's PID) once it routes.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Take services, endpoints and pods from the Kubernetes API (the
    /// config file then holds only settings). Ready after the first full
    /// sync; the last good state is kept while the API is unreachable.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig for --kube (default: in-cluster service account, then
    /// KUBECONFIG or ~/.kube/config).
    #[arg(long, requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: --kube enrols only pods scheduled here.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The address pods reach this node at (overrides
    /// router.redirect_ipv4; a DaemonSet passes status.hostIP). Without
    /// it or the field, the agent derives it (see router.redirect_ipv4).
    #[arg(long, env = "LANEWAY_REDIRECT_IPV4")]
    pub redirect_ipv4: Option<IpAddr>,
    /// This agent's rollout generation (a DaemonSet passes its pod's
    /// `pod-template-generation` label). A starting agent takes the node
    /// over from a running one of the same or an older generation, and
    /// stands by while a newer one owns it, so an old pod restarted in
    /// the middle of a rollout never takes the node back.
    #[arg(long, env = "LANEWAY_GENERATION", default_value_t = 0)]
    pub generation: u64,
    /// What an agent does once a successor took over and it drained:
    /// `exit`, or `wait` (stand by until SIGTERM, taking the node back
    /// if the successor goes away; for a DaemonSet, whose containers are
    /// restarted when they exit).
    #[arg(long, env = "LANEWAY_AFTER_HANDOVER", value_enum, default_value_t = AfterHandover::Exit)]
    pub after_handover: AfterHandover,
}

/// What an agent that was taken over does once it has drained.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterHandover {
    /// Exit (0): the agent was started by hand or by a supervisor that
    /// does not restart it.
    #[default]
    Exit,
    /// Stand by until SIGTERM, taking the node back if the owner goes away
    /// first: in a DaemonSet, where an exited container is restarted and
    /// the kubelet sends SIGTERM only when the rollout deletes the pod.
    Wait,
}

/// How [`serve`] ended.
enum Ended {
    /// SIGTERM or SIGINT.
    Stopped,
    /// A successor took over; this agent drained.
    TakenOver,
}

/// How often a standing-by agent checks whether the owner is still there.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// Runs the agent until SIGTERM or SIGINT (or, with
/// [`AfterHandover::Exit`], until a successor takes over). While an agent
/// of a newer generation owns the node, this one stands by.
pub async fn run(options: Options) -> Result<(), Error> {
    let mut stops = Stops::new()?;
    // SIGHUP: each source answers it in its own way.
    let mut hangup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let socket = Config::load(&options.config)?.admin.socket;
    // At start, an owner of a newer generation keeps the node; once taken
    // over, one of the same generation too (or two would take turns).
    let mut yield_to = options.generation.saturating_add(1);
    loop {
        if !standby(&socket, yield_to, &mut stops).await {
            return Ok(());
        }
        match serve(&options, &mut stops, &mut hangup).await? {
            Ended::Stopped => return Ok(()),
            Ended::TakenOver if options.after_handover == AfterHandover::Exit => return Ok(()),
            Ended::TakenOver => yield_to = options.generation,
        }
    }
}

/// Waits while an agent of generation `yield_to` or newer owns the node
/// (serves the admin socket at `socket`). `false` when asked to stop
/// meanwhile.
async fn standby(socket: &std::path::Path, yield_to: u64, stops: &mut Stops) -> bool {
    let mut said = false;
    loop {
        match crate::admin::owner(socket).await {
            Some(owner) if owner.generation >= yield_to => {
                if !said {
                    info!(
                        owner.generation,
                        owner.pid,
                        "standing by: an agent of a newer generation owns this node; taking over if it goes away"
                    );
                    said = true;
                }
            }
            _ => {
                if said {
                    info!("the owner is gone: taking the node over");
                }
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = stops.stopped() => {
                info!("stopped while standing by");
                return false;
            }
        }
    }
}

/// Sets up and runs the agent, owning the node, until it is stopped or a
/// successor takes over.
async fn serve(
    options: &Options,
    stops: &mut Stops,
    hangup: &mut tokio::signal::unix::Signal,
) -> Result<Ended, Error> {
    let config = settings(options)?;
    // The Kubernetes source syncs before the agent touches the node: a
    // router that started empty would close the connections the running
    // agent's maps still send it, and empty maps would send pods around it.
    let mut kube = match options.kube {
        true => Some(KubeSource::connect(options, &config).await?),
        false => None,
    };
    let first = match &mut kube {
        Some(source) => match source.first_sync(stops).await {
            Some(input) => input,
            None => return Ok(Ended::Stopped),
        },
        None => Input {
            config: config.clone(),
            unenrolled: Vec::new(),
            policy_errors: Vec::new(),
        },
    };
    let source = match &kube {
        Some(_) => "kubernetes".to_owned(),
        None => format!("file:{}", options.config.display()),
    };
    let mut node = attach(options, &config).await?;
    let written = reconcile::first(&mut node.datapath, &first, &source, config.router.mode)?;
    let pin_dir = &config.bpf.pin_path;
    let router = Router::new(
        written.applied,
        proxy_config(&config),
        Some(ConnOrigins::open(pin_dir)?),
    );
    router.telemetry.metrics.snapshot_applied();
    for (service, _) in &first.policy_errors {
        router.telemetry.metrics.policy_error(service);
    }
    let listener_fds = node.listener_fds();
    let accepting = node.accept(&router);
    let health = Arc::new(Health::default());
    let datapath = Arc::new(Mutex::new(node.datapath));
    let (handover_tx, handover) = watch::channel(false);
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
        generation: options.generation,
        listener_fds,
    });
    let (redirect4, redirect6) = listeners::redirect_addrs(&config)?;
    let heartbeat = Heartbeat::start(
        RouterMap::open(pin_dir)?,
        RouterEntry {
            redirect4,
            redirect6,
            port: config.router.listen.port(),
            mark: config.router.socket_mark,
        },
    )?;
    // An agent still running here (an overlapping restart) hands over: it
    // drains while this one serves, on the same port (SO_REUSEPORT).
    if crate::admin::take_over(&config.admin.socket, options.generation).await {
        info!("took over from the agent that was running; it drains now");
    }
    let admin_socket = crate::admin::serve_unix(&config.admin.socket, admin_state.clone())?;
    // Tasks that end with this agent's ownership of the node.
    let mut owned = Vec::new();
    if let Some(listener) = node.admin {
        owned.push(tokio::spawn(crate::admin::serve_http(
            listener,
            admin_state.clone(),
        )));
    }
    owned.push(tokio::spawn(crate::memory::trim_after_spikes(
        router.telemetry.conns.clone(),
    )));
    owned.push(tokio::spawn(crate::router::external::check(
        router.clone(),
        crate::router::external::Probing {
            interval: config.router.external_health_interval,
            timeout: config.router.external_health_timeout,
        },
    )));
    info!(listen = %config.router.listen, redirect = %config.router.redirect_ipv4, %source, "router up");

    let reconciler = Reconciler::new(
        config.router.mode,
        router.clone(),
        datapath,
        source,
        health,
        options.ready_file.clone(),
        first,
        written.slow,
    );
    stops.handover = Some(handover);
    reconciler.ready()?;
    match kube {
        Some(kube) => follow_kube(kube, &config, &reconciler, hangup, stops).await,
        None => {
            let file = &options.config;
            follow_file(file, &config, &reconciler, &admin_state, hangup, stops).await;
        }
    }
    admin_socket.abort();
    let taken_over = stops.handover.take().is_some_and(|h| *h.borrow());
    step_down(&config, taken_over, heartbeat, &router, accepting, owned).await;
    Ok(match taken_over {
        true => Ended::TakenOver,
        false => Ended::Stopped,
    })
}

/// The config file with the command line's overrides, checked against the
/// source of truth, and `router.redirect_ipv4: auto` resolved.
fn settings(options: &Options) -> Result<Config, Error> {
    let mut config = Config::load(&options.config)?;
    if let Some(ip) = options.redirect_ipv4 {
        config.router.redirect_ipv4 = ip;
    }
    if options.kube && (!config.services.is_empty() || !config.pods.is_empty()) {
        return Err(Error::KubeWithStatic(options.config.clone()));
    }
    if config.router.redirect_ipv4.is_unspecified() && config.router.mode.socket() {
        config.router.redirect_ipv4 = auto_redirect_ipv4(&config, options.kube)?;
    }
    Ok(config)
}

/// `router.redirect_ipv4: auto`: the node's address as pods reach it
/// ([`Config::derive_redirect_ipv4`]); unspecified (IPv4 connects are not
/// redirected) on a node whose static config has no IPv4 VIP.
fn auto_redirect_ipv4(config: &Config, kube: bool) -> Result<IpAddr, Error> {
    if let Some((ip, through)) = config.derive_redirect_ipv4() {
        info!(
            redirect_ipv4 = %ip,
            "router.redirect_ipv4 is auto: pods are sent to {ip}, the node's address toward {through}"
        );
        return Ok(ip.into());
    }
    if !kube && !config.has_ipv4_vip() {
        info!(
            "router.redirect_ipv4 is auto and no IPv4 route gives the node's address; no \
             service has an IPv4 VIP: IPv4 connects are not redirected"
        );
        return Ok(config.router.redirect_ipv4);
    }
    Err(Error::NoRedirectAddress)
}

/// The node as this agent holds it: its listeners, and the programs
/// attached with their maps.
struct Attached {
    datapath: Datapath,
    /// The IPv4 and (optional) IPv6 redirect listeners.
    router: Vec<tokio::net::TcpListener>,
    /// `admin.listen`, if set.
    admin: Option<tokio::net::TcpListener>,
    /// TC mode's transparent listener.
    transparent: Option<tokio::net::TcpListener>,
}

/// Binds the listeners, then attaches the programs (a redirected connect
/// must find a listener) and registers the listeners with them.
async fn attach(options: &Options, config: &Config) -> Result<Attached, Error> {
    let cgroup = match options.cgroup.clone().or(config.bpf.cgroup.clone()) {
        Some(dir) => dir,
        None => cgroup::v2_root()?,
    };
    if !cgroup::is_cgroup_dir(&cgroup) {
        return Err(Error::NotACgroup(cgroup));
    }
    listeners::allow_listener_migration();
    let mut router = vec![listeners::redirect(config, config.router.listen).await?];
    if let Some(v6) = config.router.listen_v6 {
        router.push(listeners::redirect(config, v6).await?);
    }
    let admin = config.admin.listen.map(listeners::bind).transpose()?;
    let mut datapath = Datapath::attach(&cgroup, &config.bpf.pin_path)?;
    datapath.set_tc_attach(config.bpf.tc_attach);
    datapath.set_listeners(&router[0], router.get(1))?;
    let transparent = match config.router.mode.tc() {
        true => Some(listeners::transparent(config, &mut datapath).await?),
        false => None,
    };
    info!(cgroup = %cgroup.display(), programs = ?Datapath::program_names().collect::<Vec<_>>(), "programs attached");
    Ok(Attached {
        datapath,
        router,
        admin,
        transparent,
    })
}

impl Attached {
    /// The router's listening sockets, for a successor to duplicate.
    fn listener_fds(&self) -> Vec<crate::admin::ListenerFd> {
        use std::os::fd::AsRawFd;
        let redirect = self.router.iter().map(|l| (l, false));
        let transparent = self.transparent.iter().map(|l| (l, true));
        redirect
            .chain(transparent)
            .filter_map(|(l, transparent)| {
                Some(crate::admin::ListenerFd {
                    addr: l.local_addr().ok()?,
                    fd: l.as_raw_fd(),
                    transparent,
                })
            })
            .collect()
    }

    /// Starts accepting on the router's listeners.
    fn accept(&mut self, router: &Arc<Router>) -> Vec<tokio::task::JoinHandle<()>> {
        let redirected = self.router.drain(..).map(|l| (l, false));
        let transparent = self.transparent.take().map(|l| (l, true));
        redirected
            .chain(transparent)
            .map(|(listener, transparent)| {
                tokio::spawn(router.clone().serve(listener, transparent))
            })
            .collect()
    }
}

/// Gives the node up: to a successor (`taken_over`: it serves the admin
/// socket and writes the heartbeat) or to nobody (the heartbeat cleared, so
/// new connects stop going to this router at once), then drains.
async fn step_down(
    config: &Config,
    taken_over: bool,
    heartbeat: Heartbeat,
    router: &Router,
    accepting: Vec<tokio::task::JoinHandle<()>>,
    owned: Vec<tokio::task::JoinHandle<()>>,
) {
    if taken_over {
        info!("handing over: draining while the new agent serves");
        heartbeat.stop(Stop::Leave);
    } else {
        let _ = std::fs::remove_file(&config.admin.socket);
        info!(
            "shutting down: clearing the heartbeat, new connections keep their lanes without the router from now"
        );
        heartbeat.stop(Stop::Clear);
    }
    drain::drain(router, accepting, config.router.drain_timeout).await;
    // Probes and scrapes belong to the owner: a standing-by agent answers
    // none.
    for task in owned {
        task.abort();
    }
}

/// What ends the agent's loop: SIGTERM, SIGINT, or a successor taking over.
struct Stops {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    /// Set while the agent serves: a successor's `POST /handover`.
    handover: Option<watch::Receiver<bool>>,
}

impl Stops {
    /// Installs the handlers once: a signal that comes between two phases
    /// (standing by, serving) is not lost.
    fn new() -> Result<Self, Error> {
        let install = |kind| signal(kind).map_err(Error::Signals);
        Ok(Self {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            handover: None,
        })
    }

    /// Returns when the agent is asked to stop.
    async fn stopped(&mut self) {
        let handover = async {
            match &mut self.handover {
                Some(handover) => {
                    let _ = handover.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = handover => {}
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The Kubernetes source: its watchers, and the desired state they send.
struct KubeSource {
    watchers: tokio::task::JoinHandle<()>,
    desired: watch::Receiver<Option<crate::kube::Desired>>,
}

impl KubeSource {
    /// Connects to the API server and starts the watchers for this node.
    async fn connect(options: &Options, config: &Config) -> Result<Self, Error> {
        let node = options
            .node_name
            .clone()
            .ok_or(crate::kube::Error::NoNodeName)?;
        let client = crate::kube::client(options.kubeconfig.as_deref()).await?;
        let (tx, desired) = watch::channel(None);
        let watchers = tokio::spawn(crate::kube::run(client, node, config.clone(), tx));
        Ok(Self { watchers, desired })
    }

    /// Waits for the first full sync (the agent is not ready before it);
    /// `None` when the agent is stopped meanwhile.
    async fn first_sync(&mut self, stops: &mut Stops) -> Option<Input> {
        loop {
            tokio::select! {
                changed = self.desired.changed() => {
                    changed.ok()?;
                    if let Some(input) = self.take() {
                        return Some(input);
                    }
                }
                _ = stops.stopped() => return None,
            }
        }
    }

    /// The latest desired state, once.
    fn take(&mut self) -> Option<Input> {
        let desired = self.desired.borrow_and_update().clone()?;
        Some(Input {
            config: Config::clone(&desired.config),
            unenrolled: desired
                .unenrolled
                .into_iter()
                .map(|u| (u.pod, u.reason))
                .collect(),
            policy_errors: desired.policy_errors,
        })
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.watchers.abort();
    }
}

/// Applies the Kubernetes source's snapshots until a stop. A snapshot that
/// fails to apply is logged and tried again; the last good one keeps routing.
async fn follow_kube(
    mut kube: KubeSource,
    config: &Config,
    reconciler: &Reconciler,
    hangup: &mut tokio::signal::unix::Signal,
    stops: &mut Stops,
) {
    let mut relink = tokio::time::interval(RELINK_EVERY);
    let mut retry = retry_interval();
    loop {
        tokio::select! {
            changed = kube.desired.changed() => {
                if changed.is_err() { break; }
                if let Some(input) = kube.take() {
                    // Entering pods' namespaces blocks: not on a runtime worker
                    // other tasks wait for.
                    tokio::task::block_in_place(|| reconciler.apply_or_log(input, "kubernetes"));
                }
            }
            _ = retry.tick(), if reconciler.unfinished() => tokio::task::block_in_place(|| reconciler.retry()),
            _ = relink.tick(), if config.router.mode.tc() => tokio::task::block_in_place(|| reconciler.relink_or_warn()),
            _ = hangup.recv() => info!("SIGHUP: with --kube the API is the source; restart to change settings"),
            _ = stops.stopped() => break,
        }
    }
}

/// Reloads the static file on change or SIGHUP until a stop, publishing
/// the config in force to the admin API.
async fn follow_file(
    path: &std::path::Path,
    running: &Config,
    reconciler: &Reconciler,
    admin: &AdminState,
    hangup: &mut tokio::signal::unix::Signal,
    stops: &mut Stops,
) {
    let mut seen = file_source::fingerprint(path);
    let mut poll = tokio::time::interval(RELOAD_POLL);
    let mut relink = tokio::time::interval(RELINK_EVERY);
    let mut retry = retry_interval();
    loop {
        let reason = tokio::select! {
            _ = relink.tick(), if running.router.mode.tc() => {
                tokio::task::block_in_place(|| reconciler.relink_or_warn());
                continue;
            }
            _ = hangup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if file_source::fingerprint(path) == seen { continue; }
                "file changed"
            }
            // The file as it is now: a newer edit wins over the one that failed.
            _ = retry.tick(), if reconciler.unfinished() => "retry after an apply that failed or reached not every pod",
            _ = stops.stopped() => break,
        };
        seen = file_source::fingerprint(path);
        let reloaded =
            tokio::task::block_in_place(|| file_source::reload(path, running, reconciler, reason));
        if let Some(in_force) = reloaded {
            admin.config.store(Arc::new(in_force));
        }
    }
}

/// Ticks every [`RETRY_UNFINISHED`], never in a burst after a slow apply.
fn retry_interval() -> tokio::time::Interval {
    let mut retry = tokio::time::interval(RETRY_UNFINISHED);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retry
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
        pool_max_idle_total: r.pool_max_idle_total,
        pool_idle_timeout: r.pool_idle_timeout,
        socket_mark: r.socket_mark,
        upstream_source: r.upstream_source,
        retry_idempotent: r.retry_idempotent,
    }
}

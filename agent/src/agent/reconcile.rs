//! Applying a snapshot: each pod's network namespace is opened and its
//! cookie read first, with no lock held and in bounded time; then the maps
//! are written under the datapath lock and the router swaps the result in
//! (with the enrolled pods' namespaces, kept open for their upstream
//! sockets). A failed apply leaves the last good state routing and is tried
//! again, and so is an apply that could not read some pod's namespace in
//! time: that pod keeps the enrolment it had meanwhile.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use laneway_common::{PodValue, ServiceValue};
use tracing::{error, info, warn};

use crate::{
    admin::Health,
    bpf::{self, Datapath},
    config::{Config, RedirectMode},
    kernel_lanes::KernelLanes,
    netns,
    router::{Applied, Router},
    snapshot::Snapshot,
};

/// Why a snapshot could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the maps (or attaching the TC program) failed.
    #[error(transparent)]
    Bpf(#[from] bpf::Error),
    /// The ready file could not be written.
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Applies snapshots to the maps and the router, and says when the agent is
/// ready.
pub struct Reconciler {
    /// The redirect mode (which maps enrol a pod).
    pub mode: RedirectMode,
    /// The router the snapshots go to.
    pub router: Arc<Router>,
    /// The kernel side.
    pub datapath: Arc<Mutex<Datapath>>,
    /// Where snapshots come from, for logs and `status`.
    pub source: String,
    /// Readiness, set after the first applied snapshot.
    pub health: Arc<Health>,
    /// Written once the agent routes.
    pub ready_file: Option<PathBuf>,
    /// The last input given, for [`Reconciler::relink`] and retries.
    last: Mutex<Option<Input>>,
    /// Whether the last input failed to apply, or reached not every pod
    /// (retried by [`Reconciler::retry`]).
    unfinished: AtomicBool,
}

/// What writing a snapshot to the maps gave.
pub struct Written {
    /// What the router routes by.
    pub applied: Applied,
    /// Pods whose network namespace did not open in time
    /// ([`netns::Error::Slow`]): they keep whatever enrolment they had, and
    /// the input is applied again.
    pub slow: usize,
}

/// What [`Reconciler::apply`] is given: the desired state, the pods the
/// source could not enrol and the services whose policy it rejected (both
/// `(namespace/name, reason)`).
#[derive(Clone, Debug)]
pub struct Input {
    /// Services, pods, tags and policy.
    pub config: Config,
    /// Pods the source could not enrol.
    pub unenrolled: Vec<(String, String)>,
    /// Services that keep their last good policy.
    pub policy_errors: Vec<(String, String)>,
}

impl Reconciler {
    /// A reconciler whose first input, `first`, the router already routes by
    /// (`first_slow`: pods whose namespace it could not read).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: RedirectMode,
        router: Arc<Router>,
        datapath: Arc<Mutex<Datapath>>,
        source: String,
        health: Arc<Health>,
        ready_file: Option<PathBuf>,
        first: Input,
        first_slow: usize,
    ) -> Self {
        Self {
            mode,
            router,
            datapath,
            source,
            health,
            ready_file,
            last: Mutex::new(Some(first)),
            unfinished: AtomicBool::new(first_slow > 0),
        }
    }

    /// Builds the snapshot of `input`, writes it to the maps, swaps it into
    /// the router; the first time, marks the agent ready.
    pub fn apply(&self, input: Input) -> Result<(), Error> {
        let previous = self.router.applied();
        let mut snapshot = Snapshot::from_config(
            &input.config,
            self.source.clone(),
            Some(&previous.snapshot),
            !self.health.is_ready(),
        );
        drop(previous);
        mark_policy_errors(&mut snapshot, &input.policy_errors);
        for (service, _) in &input.policy_errors {
            self.router.telemetry.metrics.policy_error(service);
        }
        let unenrolled = input.unenrolled.clone();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(input);
        // Unfinished until it is applied to every pod.
        let unfinished_before = self.unfinished.swap(true, Ordering::Relaxed);
        // Slow work (entering every pod's netns) before the lock.
        let namespaces = pod_namespaces(&snapshot);
        let written = {
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            write_maps(&mut dp, snapshot, namespaces, unenrolled, self.mode)?
        };
        self.router.swap(written.applied);
        self.router.telemetry.metrics.snapshot_applied();
        if written.slow > 0 {
            warn!(
                pods = written.slow,
                "some pods' network namespaces did not open in time; they keep the enrolment they had, retrying"
            );
        } else {
            self.unfinished.store(false, Ordering::Relaxed);
            if unfinished_before {
                info!("the state that failed to apply or reached not every pod is applied now");
            }
        }
        if !self.health.is_ready() {
            self.ready()?;
        }
        Ok(())
    }

    /// [`Reconciler::apply`], logging a failure instead of returning it:
    /// the last good snapshot keeps routing, and [`Reconciler::retry`]
    /// tries the input again. Whether it was applied.
    pub fn apply_or_log(&self, input: Input, reason: &str) -> bool {
        match self.apply(input) {
            Ok(()) => true,
            Err(e) => {
                error!(%reason, error = %e, "applying the new state failed; still routing by the last good one, retrying");
                false
            }
        }
    }

    /// Whether the last input failed to apply or reached not every pod.
    pub fn unfinished(&self) -> bool {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Applies the last input again if it is [`Reconciler::unfinished`].
    pub fn retry(&self) {
        if !self.unfinished() {
            return;
        }
        if let Some(last) = self.last_input() {
            self.apply_or_log(last, "retry");
        }
    }

    fn last_input(&self) -> Option<Input> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// TC mode: applies the last input again when a pod's veth was
    /// recreated, appeared or went away, so the program follows the veth.
    /// Cheap when nothing changed (one `if_nametoindex` per pod).
    pub fn relink(&self) -> Result<(), Error> {
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
        let Some(last) = self.last_input() else {
            return Ok(());
        };
        info!("a pod's veth was recreated, appeared or went away: attaching the TC program again");
        self.apply(last)
    }

    /// [`Reconciler::relink`], logging a failure (retried at the next tick).
    pub fn relink_or_warn(&self) {
        if let Err(e) = self.relink() {
            warn!(error = %e, "attaching the TC program to a changed veth failed; retrying");
        }
    }

    /// Marks the agent ready (and writes the ready file).
    pub fn ready(&self) -> Result<(), Error> {
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

/// Applies the agent's first input, before the router exists: what the
/// router starts with.
pub fn first(
    datapath: &mut Datapath,
    input: &Input,
    source: &str,
    mode: RedirectMode,
) -> Result<Written, Error> {
    let mut snapshot = Snapshot::from_config(&input.config, source.to_owned(), None, true);
    mark_policy_errors(&mut snapshot, &input.policy_errors);
    let namespaces = pod_namespaces(&snapshot);
    write_maps(
        datapath,
        snapshot,
        namespaces,
        input.unenrolled.clone(),
        mode,
    )
}

/// Shows each rejected policy on its service (it keeps its last good one).
fn mark_policy_errors(snapshot: &mut Snapshot, errors: &[(String, String)]) {
    for (service, error) in errors {
        if let Some(s) = snapshot
            .services
            .iter_mut()
            .find(|s| s.id.to_string() == *service)
        {
            s.policy_error = Some(error.clone());
        }
    }
}

/// Each pod's network namespace with its cookie (in the snapshot's pod
/// order), opened in parallel and in bounded time ([`netns::COOKIE_TIMEOUT`]).
fn pod_namespaces(snapshot: &Snapshot) -> Vec<Result<netns::Namespace, netns::Error>> {
    let paths: Vec<&std::path::Path> = snapshot.pods.iter().map(|p| p.netns.as_path()).collect();
    netns::open_all(&paths, netns::COOKIE_TIMEOUT)
}

/// Writes a snapshot to the maps, given each pod's network namespace, and
/// returns what the router needs (with the enrolled pods' namespaces).
/// While a namespace is too slow to read, no pod loses its `ENROLLED`
/// entry: the slow pod's cookie is unknown, and dropping the entry it may
/// have (from this agent's last apply, or from the agent this one took
/// over from) would send its connections around the router.
fn write_maps(
    datapath: &mut Datapath,
    snapshot: Snapshot,
    namespaces: Vec<Result<netns::Namespace, netns::Error>>,
    mut unenrolled: Vec<(String, String)>,
    mode: RedirectMode,
) -> Result<Written, Error> {
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
    let mut pod_netns = HashMap::new();
    let mut slow = 0;
    for ((index, pod), namespace) in snapshot.pods.iter().enumerate().zip(namespaces) {
        match namespace {
            Ok(namespace) if Some(namespace.cookie) == own_netns => {
                let reason = "its network namespace is the agent's own: redirecting it would loop the router";
                error!(%pod, netns = %pod.netns.display(), "not enrolled: {reason}");
                unenrolled.push((pod.to_string(), reason.to_owned()));
            }
            Ok(namespace) => {
                let cookie = namespace.cookie;
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
                pod_netns.insert(index, Arc::new(namespace));
            }
            Err(e) => {
                if matches!(e, netns::Error::Slow { .. }) {
                    slow += 1;
                }
                warn!(%pod, error = %e, "not enrolled: network namespace not usable");
                unenrolled.push((pod.to_string(), e.to_string()));
            }
        }
    }
    let (mut tc_enrolled, tc_interfaces) = match mode.tc() {
        true => attach_tc(datapath, &snapshot, &mut unenrolled),
        false => Default::default(),
    };
    // The kernel's own lanes (no live router, `protocol: tcp`): their
    // endpoints first, so the services and pods pointing at them find them.
    let lanes = KernelLanes::new(&snapshot, datapath.lane_ids_mut());
    lanes.annotate(&mut services, &mut enrolled, &mut tc_enrolled);
    datapath.sync_lane_endpoints(&lanes.endpoints)?;
    // Services first: a newly enrolled pod must find its services in place.
    let s = datapath.sync_services(&services)?;
    let stale = match slow {
        0 => bpf::Stale::Remove,
        _ => bpf::Stale::Keep,
    };
    let e = datapath.sync_enrolled(&enrolled, stale)?;
    datapath.sync_tc_enrolled(&tc_enrolled)?;
    // Veths of pods that left, or that are gone, lose the program.
    let keep = tc_interfaces.iter().map(String::as_str).collect();
    datapath.detach_tc_except(&keep);
    // By either mode (in `both`, a pod is in both maps).
    let enrolled_pods = enrolled
        .values()
        .chain(tc_enrolled.values())
        .map(|pod| pod.pod_id)
        .collect::<HashSet<_>>()
        .len();
    info!(
        source = %snapshot.source,
        services = snapshot.services.len(),
        service_ports = services.len(),
        pods_enrolled = enrolled_pods,
        pods_wanted = snapshot.pods.len(),
        map_writes = s.written + e.written,
        map_removals = s.removed + e.removed,
        "snapshot applied"
    );
    Ok(Written {
        applied: Applied {
            snapshot,
            pods_by_cookie,
            netns: pod_netns,
            unenrolled,
        },
        slow,
    })
}

/// TC mode: attaches the program to each pod's veth; returns `TC_ENROLLED`'s
/// desired entries and the interfaces that carry the program.
fn attach_tc(
    datapath: &mut Datapath,
    snapshot: &Snapshot,
    unenrolled: &mut Vec<(String, String)>,
) -> (HashMap<u32, PodValue>, HashSet<String>) {
    let mut tc_enrolled = HashMap::new();
    let mut tc_interfaces = HashSet::new();
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
                tc_interfaces.insert(interface.clone());
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
    (tc_enrolled, tc_interfaces)
}

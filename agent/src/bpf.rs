//! The kernel side: loading the programs, attaching them to a cgroup, and
//! keeping their maps in step with the snapshot.
//!
//! Maps are pinned by name in `bpf.pin_path`, and so are the cgroup links of
//! every socket program but `getsockopt` (aya cannot make its link
//! pinnable; it answers only a live router's queries, see [`ConnOrigins`]):
//! they outlive the agent, however it exits, and the next agent takes them
//! over. While no live router answers, the programs send nothing to it:
//! the router's listener is gone from the `ROUTER_LISTENER` sockmap (the
//! kernel removes a closed socket) or its heartbeat in the `ROUTER` map is
//! older than [`laneway_common::HEARTBEAT_TIMEOUT_NS`]; instead they keep
//! each connection in its caller's lane themselves, from `LANE_ENDPOINTS`
//! ([`crate::kernel_lanes`]). TC mode's TCX links are pinned too (per agent,
//! under `tc-links/`), and clsact filters stay by themselves.

use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, SockMap},
    programs::{
        CgroupAttachMode, Program, ProgramError, SchedClassifier, SkLookup, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
    },
};
use tracing::{debug, warn};

use crate::{config::TcAttach, kernel_lanes::LaneIds};
use laneway_common::{
    ConnKey, LaneEndpoints, LaneKey, OriginalDst, PodValue, RouterInfo, ServiceKey, ServiceValue,
    TcFlow, TcFlowKey, map_names, stat, v4_mapped,
};

/// The compiled kernel programs (built by `build.rs`).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(env!("LANEWAY_EBPF_OBJ"));

/// The programs and the kernel feature each one needs, for error messages.
const SOCKET_PROGRAMS: &[(&str, &str)] = &[
    (
        "connect4",
        "cgroup/connect4 (BPF_CGROUP_INET4_CONNECT, Linux 4.17+)",
    ),
    (
        "connect6",
        "cgroup/connect6 (BPF_CGROUP_INET6_CONNECT, Linux 4.17+)",
    ),
    ("sock_ops", "sock_ops (BPF_CGROUP_SOCK_OPS, Linux 4.13+)"),
    (
        "getsockopt",
        "cgroup/getsockopt (BPF_CGROUP_GETSOCKOPT, Linux 5.3+)",
    ),
    (
        "getpeername4",
        "cgroup/getpeername4 (BPF_CGROUP_INET4_GETPEERNAME, Linux 5.8+)",
    ),
    (
        "getpeername6",
        "cgroup/getpeername6 (BPF_CGROUP_INET6_GETPEERNAME, Linux 5.8+)",
    ),
];

/// The TC programs, each with the direction of the pod's host-side veth it
/// attaches to: `tc_ingress` (from the pod) and `tc_egress` (to the pod,
/// the replies of the flows `tc_ingress` DNATed).
pub(crate) const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("tc_ingress", TcAttachType::Ingress),
    ("tc_egress", TcAttachType::Egress),
];

/// The kernel feature the TC programs need.
const TC_FEATURE: &str =
    "tc classifiers with bpf_sk_assign (TCX on Linux 6.6+, else clsact; Linux 5.7+)";

/// TC mode's `sk_lookup` program: the node's listener lookup for a service
/// VIP:port answers the transparent listener, so a pod's SYN that meets the
/// router's TIME_WAIT socket of an earlier connection on the same 4-tuple
/// opens a new connection at once. Attached to the agent's netns while the
/// agent runs (its link is not pinned: without a live router it answers
/// nothing anyway).
const TC_LOOKUP: &str = "tc_lookup";

/// The kernel feature [`TC_LOOKUP`] needs.
const TC_LOOKUP_FEATURE: &str = "sk_lookup (BPF_SK_LOOKUP, Linux 5.9+)";

/// The directory, under the pin directory, of TC mode's TCX links: one
/// subdirectory per agent (its generation), so an agent never unpins a
/// link of another one that still runs.
const TC_LINKS_DIR: &str = "tc-links";

/// The direction of a TC program's hook, as `tc` spells it.
pub(crate) fn tc_direction(attach: TcAttachType) -> &'static str {
    match attach {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// A TC program's attachment to one interface.
enum TcLink {
    /// A TCX link, pinned: it outlives the agent, however it exits, until
    /// the next agent attaches its own (or `laneway uninstall`).
    Tcx(PinnedLink),
    /// A clsact filter. It outlives the agent however it exits (a killed
    /// one's by itself; aya would delete it when the program drops, so the
    /// link is never dropped), until this agent detaches it or the next
    /// agent replaces it. Not dropping matters at a handover: the filter
    /// the successor put in its place has the same priority and handle, and
    /// deleting "ours" on the way out would delete the successor's.
    Netlink(std::mem::ManuallyDrop<SchedClassifierLink>),
}

/// The clsact filter priority of the TC program when it attaches by netlink
/// ("LW"): a priority of its own, so it replaces nothing, and runs after
/// the filters at lower priorities (a CNI's).
pub const TC_PRIORITY: u16 = 0x4c57;

/// Makes a TC program's failure to do `action` an [`Error::Program`].
fn tc_error(action: String) -> impl FnOnce(ProgramError) -> Error {
    move |source| Error::Program {
        action,
        feature: TC_FEATURE,
        source,
    }
}

/// The handle of laneway's clsact filters, fixed so that an agent can put
/// its program in place of the one in the filter already there.
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// What went wrong with the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be loaded (maps created, BTF parsed).
    #[error(
        "cannot load laneway's BPF object: {0} (needs CAP_BPF/CAP_SYS_ADMIN and BPF support in the kernel)"
    )]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object (a build problem).
    #[error("the BPF object has no program {0}")]
    MissingProgram(&'static str),
    /// A program could not be loaded or attached.
    #[error("cannot {action} {feature}: {source}")]
    Program {
        /// "load" or "attach to CGROUP".
        action: String,
        /// The program and the kernel feature it needs.
        feature: &'static str,
        /// The cause.
        source: ProgramError,
    },
    /// The cgroup directory cannot be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A map is missing from the object.
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    /// The pin directory cannot be created.
    #[error("cannot create the BPF pin directory {path}: {source}")]
    Pin {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The pin directory is not on bpffs.
    #[error(
        "{0} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or set bpf.pin_path"
    )]
    NotBpffs(PathBuf),
    /// A link could not be pinned.
    #[error("cannot pin the link of {program}: {message}")]
    Link {
        /// The program.
        program: &'static str,
        /// What failed.
        message: String,
    },
    /// `RLIMIT_MEMLOCK` cannot be lifted on a kernel that charges maps to it.
    #[error(
        "cannot lift RLIMIT_MEMLOCK ({0}): Linux before 5.11 charges BPF maps to it; grant \
         CAP_SYS_RESOURCE or start the agent with an unlimited memlock limit"
    )]
    Memlock(std::io::Error),
    /// Pods' netns cookies cannot be learned (see [`crate::netns::probe`]).
    #[error("cannot learn network namespaces' cookies: {0}")]
    NetnsCookie(crate::netns::probe::Error),
    /// A map operation failed.
    #[error("BPF map {map}: {}", describe_map_error(source))]
    Map {
        /// The map.
        map: &'static str,
        /// The cause.
        source: MapError,
    },
}

/// Before Linux 5.11, BPF maps are charged to `RLIMIT_MEMLOCK` (often
/// 64 KiB), not to the memory cgroup: lift the limit there, or say what is
/// missing instead of failing map by map with EPERM.
fn raise_memlock() -> Result<(), Error> {
    let charged_to_memlock = crate::preflight::kernel_release()
        .as_deref()
        .and_then(crate::preflight::parse_release)
        .is_some_and(|version| version < (5, 11));
    if !charged_to_memlock {
        return Ok(());
    }
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) } == 0
        && current.rlim_cur == libc::RLIM_INFINITY
    {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        return Err(Error::Memlock(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether this agent can learn pods' netns cookies: `SO_NETNS_COOKIE`
/// (Linux 5.14+), or else the probe through the `connect4` just attached,
/// which sees only sockets made inside `bpf.cgroup`.
fn usable_netns_cookies() -> Result<(), Error> {
    if crate::netns::so_netns_cookie_here().is_ok() {
        return Ok(());
    }
    crate::netns::probe::cookie_here()
        .map(drop)
        .map_err(Error::NetnsCookie)
}

/// A map error with the kernel's reason, which `MapError` keeps only as
/// its source; a full map says so.
fn describe_map_error(error: &MapError) -> String {
    match error {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            format!("{error}: the map is full ({})", e.io_error)
        }
        MapError::SyscallError(e) => format!("{error}: {}", e.io_error),
        other => other.to_string(),
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, source }
}

/// The loaded, attached programs and their maps.
pub struct Datapath {
    /// Owns the programs, the unpinned `getsockopt` link and the TC links.
    ebpf: Ebpf,
    tc_enrolled: HashMap<MapData, u32, PodValue>,
    /// Interfaces the TC programs are attached to, with their ifindex then
    /// (a recreated veth has a new one and is attached again) and the links.
    tc_attached: StdHashMap<String, (u32, Vec<TcLink>)>,
    /// This agent's name among the agents that pinned links here.
    generation: String,
    /// How the TC program attaches.
    tc_attach: TcAttach,
    /// Whether [`TC_LOOKUP`] is attached to the agent's netns.
    tc_lookup_attached: bool,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    listeners: SockMap<MapData>,
    enrolled: HashMap<MapData, u64, PodValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    router: Array<MapData, RouterInfo>,
    stats: PerCpuArray<MapData, u64>,
    orig_by_cookie: HashMap<MapData, u64, OriginalDst>,
    orig_by_conn: HashMap<MapData, ConnKey, OriginalDst>,
    lane_endpoints: HashMap<MapData, LaneKey, LaneEndpoints>,
    tc_flows: HashMap<MapData, TcFlowKey, TcFlow>,
    /// The lane ids `ENROLLED` and `LANE_ENDPOINTS` use, kept for the
    /// agent's life (see [`LaneIds`]).
    lane_ids: LaneIds,
}

/// What a map sync does with the entries the desired state lacks (only
/// [`Datapath::sync_enrolled`] keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Removes them: the desired state names every pod.
    Remove,
    /// Keeps them: some pods' namespaces could not be read this time, so
    /// their cookies are unknown and any entry may be theirs.
    Keep,
}

/// How many entries a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Entries added or changed.
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
}

/// Counter values summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Connects rewritten to the router.
    pub redirected: u64,
    /// Connects left alone because the router's heartbeat was stale.
    pub fail_open: u64,
    /// Original-destination queries answered.
    pub origdst_answered: u64,
    /// Original-destination queries on unknown sockets.
    pub origdst_missed: u64,
    /// Connects routed in the kernel to an endpoint of the caller's lane.
    pub kernel_routed: u64,
}

impl Datapath {
    /// Loads the programs and attaches them to the cgroup v2 directory
    /// `cgroup`. Maps are pinned by name in `pin_dir` (reused when a previous
    /// agent left them), and so are the links of every program but
    /// `getsockopt` (only a live router asks it, and aya cannot pin its
    /// link): they stay attached while no agent runs, steering to nobody, so
    /// they fail open until the next agent. Links pinned by earlier agents
    /// are removed once this agent's are in place.
    pub fn attach(cgroup: &Path, pin_dir: &Path) -> Result<Self, Error> {
        let pin_err = |source| Error::Pin {
            path: pin_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(pin_dir).map_err(pin_err)?;
        if !is_bpffs(pin_dir) {
            return Err(Error::NotBpffs(pin_dir.to_owned()));
        }
        unpin_outgrown_stats(pin_dir);
        raise_memlock()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(PROGRAMS)?;
        let cgroup_file = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let generation = format!("{}-{}", std::process::id(), monotonic_ns());
        let links_dir = pin_dir.join("links");
        let ours = links_dir.join(&generation);
        std::fs::create_dir_all(&ours).map_err(pin_err)?;
        let attach_action = format!("attach to {}", cgroup.display());
        for &(name, feature) in SOCKET_PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
            let wrap = |action: &str| {
                let action = action.to_owned();
                move |source| Error::Program {
                    action,
                    feature,
                    source,
                }
            };
            // Single mode uses a bpf link, which coexists with any other
            // program on the same cgroup (a CNI's) and never replaces it.
            let mode = CgroupAttachMode::Single;
            let pin_link = |link: Result<FdLink, _>| -> Result<(), Error> {
                let link = link.map_err(|e: aya::programs::links::LinkError| Error::Link {
                    program: name,
                    message: e.to_string(),
                })?;
                link.pin(ours.join(name)).map_err(|e| Error::Link {
                    program: name,
                    message: e.to_string(),
                })?;
                Ok(())
            };
            match program {
                Program::CgroupSockAddr(p) => {
                    p.load().map_err(wrap("load"))?;
                    let id = p.attach(&cgroup_file, mode).map_err(wrap(&attach_action))?;
                    pin_link(FdLink::try_from(
                        p.take_link(id).map_err(wrap("take the link of"))?,
                    ))?;
                }
                Program::SockOps(p) => {
                    p.load().map_err(wrap("load"))?;
                    let id = p.attach(&cgroup_file, mode).map_err(wrap(&attach_action))?;
                    pin_link(FdLink::try_from(
                        p.take_link(id).map_err(wrap("take the link of"))?,
                    ))?;
                }
                Program::CgroupSockopt(p) => {
                    p.load().map_err(wrap("load"))?;
                    p.attach(&cgroup_file, mode).map_err(wrap(&attach_action))?;
                }
                _ => return Err(Error::MissingProgram(name)),
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(Error::MissingMap(name))
        };
        let netns_probe = take(&mut ebpf, map_names::NETNS_PROBE)?;
        crate::netns::probe::install(
            HashMap::try_from(netns_probe).map_err(map_err(map_names::NETNS_PROBE))?,
        );
        if let Err(e) = usable_netns_cookies() {
            // Refused before an earlier agent's links go: they keep working.
            remove_generations(&links_dir, |g| g == generation);
            return Err(e);
        }
        remove_generations(&links_dir, |g| g != generation);
        let enrolled = take(&mut ebpf, map_names::ENROLLED)?;
        let services = take(&mut ebpf, map_names::SERVICES)?;
        let router = take(&mut ebpf, map_names::ROUTER)?;
        let stats = take(&mut ebpf, map_names::STATS)?;
        let orig_by_cookie = take(&mut ebpf, map_names::ORIG_BY_COOKIE)?;
        let orig_by_conn = take(&mut ebpf, map_names::ORIG_BY_CONN)?;
        let listeners = take(&mut ebpf, map_names::ROUTER_LISTENER)?;
        let tc_enrolled = take(&mut ebpf, map_names::TC_ENROLLED)?;
        let lane_endpoints = take(&mut ebpf, map_names::LANE_ENDPOINTS)?;
        let tc_flows = take(&mut ebpf, map_names::TC_FLOWS)?;
        load_tc_programs(&mut ebpf)?;
        Ok(Self {
            cgroup: cgroup.to_owned(),
            pin_dir: pin_dir.to_owned(),
            enrolled: HashMap::try_from(enrolled).map_err(map_err(map_names::ENROLLED))?,
            services: HashMap::try_from(services).map_err(map_err(map_names::SERVICES))?,
            router: Array::try_from(router).map_err(map_err(map_names::ROUTER))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(map_names::STATS))?,
            orig_by_cookie: HashMap::try_from(orig_by_cookie)
                .map_err(map_err(map_names::ORIG_BY_COOKIE))?,
            orig_by_conn: HashMap::try_from(orig_by_conn)
                .map_err(map_err(map_names::ORIG_BY_CONN))?,
            listeners: SockMap::try_from(listeners).map_err(map_err(map_names::ROUTER_LISTENER))?,
            tc_enrolled: HashMap::try_from(tc_enrolled).map_err(map_err(map_names::TC_ENROLLED))?,
            lane_endpoints: HashMap::try_from(lane_endpoints)
                .map_err(map_err(map_names::LANE_ENDPOINTS))?,
            tc_flows: HashMap::try_from(tc_flows).map_err(map_err(map_names::TC_FLOWS))?,
            lane_ids: LaneIds::default(),
            tc_attached: Default::default(),
            generation,
            tc_attach: TcAttach::Auto,
            tc_lookup_attached: false,
            ebpf,
        })
    }

    /// Registers the router's listening sockets: while one is open, the
    /// programs may redirect to it (IPv4 at index 0, IPv6 at 1).
    pub fn set_listeners(
        &mut self,
        v4: &impl AsRawFd,
        v6: Option<&impl AsRawFd>,
    ) -> Result<(), Error> {
        let name = map_names::ROUTER_LISTENER;
        self.listeners.set(0, v4, 0).map_err(map_err(name))?;
        match v6 {
            Some(v6) => self.listeners.set(1, v6, 0).map_err(map_err(name))?,
            // No IPv6 listener: clear the slot, in case an earlier agent
            // registered one. Deleting an empty sockmap slot fails with
            // EINVAL on current kernels (not ENOENT): nothing to clear.
            None => match self.listeners.clear_index(&1) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if matches!(e.io_error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) => return Err(map_err(name)(e)),
            },
        }
        Ok(())
    }

    /// TC mode: attaches the TC programs to `interface` (`tc_ingress` to its
    /// ingress, `tc_egress` to its egress; TCX links on Linux 6.6+, pinned,
    /// else clsact filters), after any program already there; once per
    /// interface instance (`ifindex`).
    pub fn attach_tc(&mut self, interface: &str, ifindex: u32) -> Result<(), Error> {
        match self.tc_attached.get(interface) {
            Some((attached, _)) if *attached == ifindex => return Ok(()),
            // The veth was recreated: its old links went with it.
            Some(_) => self.detach_tc(interface),
            None => {}
        }
        let tcx = self.tcx();
        if !tcx {
            let _ = aya::programs::tc::qdisc_add_clsact(interface);
        }
        let mut links = Vec::with_capacity(TC_PROGRAMS.len());
        for (name, direction) in TC_PROGRAMS {
            match self.attach_tc_program(interface, name, direction, tcx) {
                Ok(link) => links.push(link),
                Err(e) => {
                    // Both or neither: a DNAT without its reverse would
                    // break connections.
                    self.tc_attached
                        .insert(interface.to_owned(), (ifindex, links));
                    self.detach_tc(interface);
                    return Err(e);
                }
            }
        }
        self.tc_attached
            .insert(interface.to_owned(), (ifindex, links));
        Ok(())
    }

    /// Attaches TC program `name` to `interface`'s `direction`: a TCX link
    /// after the programs already there, pinned in this agent's directory,
    /// or a clsact filter at [`TC_PRIORITY`].
    fn attach_tc_program(
        &mut self,
        interface: &str,
        name: &'static str,
        direction: TcAttachType,
        tcx: bool,
    ) -> Result<TcLink, Error> {
        let id = match tcx {
            true => self
                .tc_program(name, "attach")?
                .attach_with_options(
                    interface,
                    direction,
                    TcAttachOptions::TcxOrder(Default::default()),
                )
                .map_err(tc_error(format!("attach {name} to {interface}")))?,
            false => self.attach_tc_filter(interface, name, direction)?,
        };
        let link = self
            .tc_program(name, "attach")?
            .take_link(id)
            .map_err(tc_error(format!("take the link of {name} on {interface}")))?;
        if !tcx {
            return Ok(TcLink::Netlink(std::mem::ManuallyDrop::new(link)));
        }
        let link_err = |message: String| Error::Link {
            program: name,
            message,
        };
        let link = FdLink::try_from(link).map_err(|e| link_err(e.to_string()))?;
        let dir = self.pin_dir.join(TC_LINKS_DIR).join(&self.generation);
        std::fs::create_dir_all(&dir).map_err(|e| link_err(e.to_string()))?;
        let path = dir.join(format!("{interface}-{}", tc_direction(direction)));
        // A link left by this agent on an earlier veth of that name.
        let _ = std::fs::remove_file(&path);
        let pinned = link.pin(&path).map_err(|e| link_err(e.to_string()))?;
        Ok(TcLink::Tcx(pinned))
    }

    /// Puts TC program `name` in laneway's clsact filter on `interface`'s
    /// `direction` ([`TC_PRIORITY`], [`TC_HANDLE`]). A filter already there
    /// (the running agent's at a handover, or one an agent left as it
    /// exited) gets the program in place, in one netlink request: no packet
    /// meets the veth without one, as deleting and adding would let a few
    /// pass. Else the filter is created, after removing any stale one at
    /// that priority (another handle: older agents let the kernel choose).
    fn attach_tc_filter(
        &mut self,
        interface: &str,
        name: &'static str,
        direction: TcAttachType,
    ) -> Result<SchedClassifierLinkId, Error> {
        let program = self.tc_program(name, "attach")?;
        if let Ok(there) =
            SchedClassifierLink::attached(interface, direction, TC_PRIORITY, TC_HANDLE, None)
            && let Ok(id) = program.attach_to_link(there)
        {
            return Ok(id);
        }
        if let Err(e) = crate::tproxy::remove_tc_filter_of(interface, name, direction) {
            warn!(%interface, error = %e, "could not look for a stale laneway TC filter");
        }
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            ..Default::default()
        });
        self.tc_program(name, "attach")?
            .attach_with_options(interface, direction, options)
            .map_err(tc_error(format!("attach {name} to {interface}")))
    }

    /// Detaches the TC programs from every interface not in `keep` (pods
    /// that left enrolment, or whose veth is gone), and unpins the TCX
    /// links of agents started before this one (this agent's links are in
    /// place by now; an earlier agent still running keeps its own until it
    /// exits). Never a later agent's: an old agent standing by may still
    /// apply.
    pub fn detach_tc_except(&mut self, keep: &std::collections::HashSet<&str>) {
        let gone: Vec<String> = self
            .tc_attached
            .keys()
            .filter(|i| !keep.contains(i.as_str()))
            .cloned()
            .collect();
        for interface in gone {
            self.detach_tc(&interface);
        }
        let ours = generation_started(&self.generation);
        remove_generations(&self.pin_dir.join(TC_LINKS_DIR), |g| {
            generation_started(g) < ours
        });
    }

    /// Detaches the TC programs from `interface`; a veth that is gone took
    /// its links along, which is no error.
    fn detach_tc(&mut self, interface: &str) {
        let Some((_, links)) = self.tc_attached.remove(interface) else {
            return;
        };
        for link in links {
            let result = match link {
                // Unpinned and closed: the kernel detaches it.
                TcLink::Tcx(pinned) => pinned.unpin().map(drop).map_err(|e| e.to_string()),
                TcLink::Netlink(link) => {
                    let link = std::mem::ManuallyDrop::into_inner(link);
                    aya::programs::Link::detach(link).map_err(|e| e.to_string())
                }
            };
            if let Err(error) = result {
                debug!(%interface, %error, "TC link already gone");
            }
        }
    }

    /// Whether every interface in `wanted` that exists now carries the TC
    /// program under its current ifindex, and every attached one still
    /// exists: false after a veth was recreated, appeared or went away.
    pub fn tc_links_current<'a>(&self, wanted: impl IntoIterator<Item = &'a str>) -> bool {
        let current = |interface: &str| nix::net::if_::if_nametoindex(interface).ok();
        wanted.into_iter().all(|interface| {
            current(interface) == self.tc_attached.get(interface).map(|(ifindex, _)| *ifindex)
        })
    }

    /// The interfaces the TC program is attached to, sorted.
    pub fn tc_interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tc_attached.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether the TC program attaches as a TCX link (else a clsact filter).
    fn tcx(&self) -> bool {
        match self.tc_attach {
            TcAttach::Tcx => true,
            TcAttach::Netlink => false,
            TcAttach::Auto => aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
        }
    }

    /// The TC programs with their hooks, for people: (`tc_ingress`,
    /// `tc ingress (tcx)`) or (`tc_egress`, `tc egress (clsact, pref
    /// 19543)`).
    pub fn tc_hooks(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        TC_PROGRAMS.into_iter().map(|(name, direction)| {
            let direction = tc_direction(direction);
            let hook = match self.tcx() {
                true => format!("tc {direction} (tcx)"),
                false => format!("tc {direction} (clsact, pref {TC_PRIORITY})"),
            };
            (name, hook)
        })
    }

    /// Chooses how the TC program attaches from now on.
    pub fn set_tc_attach(&mut self, how: TcAttach) {
        self.tc_attach = how;
    }

    fn tc_program(
        &mut self,
        name: &'static str,
        action: &str,
    ) -> Result<&mut SchedClassifier, Error> {
        tc_program(&mut self.ebpf, name, action)
    }

    /// Makes `TC_ENROLLED` hold exactly `desired` (veth ifindex to pod).
    pub fn sync_tc_enrolled(
        &mut self,
        desired: &StdHashMap<u32, PodValue>,
    ) -> Result<SyncCounts, Error> {
        sync(
            &mut self.tc_enrolled,
            desired,
            map_names::TC_ENROLLED,
            Stale::Remove,
        )
    }

    /// Registers the transparent listener of TC mode, and attaches
    /// [`TC_LOOKUP`] to the netns of the calling thread (the agent's, where
    /// the listener lives).
    pub fn set_tc_listener(&mut self, listener: &impl AsRawFd) -> Result<(), Error> {
        self.listeners
            .set(laneway_common::TC_LISTENER, listener, 0)
            .map_err(map_err(map_names::ROUTER_LISTENER))?;
        if self.tc_lookup_attached {
            return Ok(());
        }
        let wrap = |action: &str| {
            let action = action.to_owned();
            move |source| Error::Program {
                action,
                feature: TC_LOOKUP_FEATURE,
                source,
            }
        };
        let netns_path = "/proc/thread-self/ns/net";
        let netns = File::open(netns_path)
            .map_err(|e| wrap(&format!("open {netns_path} for"))(ProgramError::IOError(e)))?;
        tc_lookup_program(&mut self.ebpf)?
            .attach(netns)
            .map_err(wrap("attach to the agent's netns"))?;
        self.tc_lookup_attached = true;
        Ok(())
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Loads every program into the kernel (verifier included) without
    /// attaching it, then unloads it: whether this kernel runs laneway.
    /// Returns the names of the programs loaded.
    pub fn probe() -> Result<Vec<String>, Error> {
        // The maps are pinned by name: give them a throwaway directory.
        let dir = PathBuf::from(format!("/sys/fs/bpf/laneway-probe-{}", std::process::id()));
        let result = Self::probe_in(&dir);
        let _ = unpin_all(&dir);
        result
    }

    fn probe_in(dir: &Path) -> Result<Vec<String>, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Pin {
            path: dir.to_owned(),
            source,
        })?;
        if !is_bpffs(dir) {
            return Err(Error::NotBpffs(dir.to_owned()));
        }
        raise_memlock()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(PROGRAMS)?;
        let mut loaded = Vec::new();
        for &(name, feature) in SOCKET_PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
            let result = match program {
                Program::CgroupSockAddr(p) => p.load(),
                Program::SockOps(p) => p.load(),
                Program::CgroupSockopt(p) => p.load(),
                _ => return Err(Error::MissingProgram(name)),
            };
            result.map_err(|source| Error::Program {
                action: "load".into(),
                feature,
                source,
            })?;
            loaded.push(name.to_owned());
        }
        load_tc_programs(&mut ebpf)?;
        loaded.extend(TC_PROGRAMS.iter().map(|(name, _)| (*name).to_owned()));
        loaded.push(TC_LOOKUP.to_owned());
        Ok(loaded)
    }

    /// The programs, with the hook each runs at.
    pub fn programs() -> impl Iterator<Item = (&'static str, &'static str)> {
        SOCKET_PROGRAMS
            .iter()
            .map(|(name, feature)| (*name, feature.split(' ').next().unwrap_or(feature)))
    }

    /// The router's entry as the programs see it.
    pub fn router_entry(&self) -> Result<RouterInfo, Error> {
        self.router.get(&0, 0).map_err(map_err(map_names::ROUTER))
    }

    /// Every `ENROLLED` entry.
    pub fn enrolled_entries(&self) -> Vec<(u64, PodValue)> {
        self.enrolled.iter().filter_map(Result::ok).collect()
    }

    /// Every `SERVICES` entry.
    pub fn service_entries(&self) -> Vec<(ServiceKey, ServiceValue)> {
        self.services.iter().filter_map(Result::ok).collect()
    }

    /// Every `ORIG_BY_COOKIE` entry.
    pub fn cookie_entries(&self) -> Vec<(u64, OriginalDst)> {
        self.orig_by_cookie.iter().filter_map(Result::ok).collect()
    }

    /// Every `ORIG_BY_CONN` entry.
    pub fn conn_entries(&self) -> Vec<(ConnKey, OriginalDst)> {
        self.orig_by_conn.iter().filter_map(Result::ok).collect()
    }

    /// Entries and capacity of each map, by name.
    pub fn fill_levels(&self) -> Vec<(&'static str, u64, u64)> {
        let (cookies, conns) = self.connection_entries();
        vec![
            (
                map_names::ENROLLED,
                self.enrolled.keys().count() as u64,
                u64::from(laneway_common::ENROLLED_CAPACITY),
            ),
            (
                map_names::SERVICES,
                self.services.keys().count() as u64,
                u64::from(laneway_common::SERVICES_CAPACITY),
            ),
            (
                map_names::LANE_ENDPOINTS,
                self.lane_endpoints.keys().count() as u64,
                u64::from(laneway_common::LANE_ENDPOINTS_CAPACITY),
            ),
            (
                map_names::ORIG_BY_COOKIE,
                cookies as u64,
                u64::from(laneway_common::CONN_MAP_CAPACITY),
            ),
            (
                map_names::ORIG_BY_CONN,
                conns as u64,
                u64::from(laneway_common::CONN_MAP_CAPACITY),
            ),
            (
                map_names::TC_FLOWS,
                self.tc_flows.keys().count() as u64,
                u64::from(laneway_common::CONN_MAP_CAPACITY),
            ),
        ]
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Names of the attached programs.
    pub fn program_names() -> impl Iterator<Item = &'static str> {
        SOCKET_PROGRAMS.iter().map(|(name, _)| *name)
    }

    /// Makes `SERVICES` hold exactly `desired`: new and changed entries first,
    /// then stale ones removed, so no VIP in both old and new is ever missing.
    pub fn sync_services(
        &mut self,
        desired: &StdHashMap<ServiceKey, ServiceValue>,
    ) -> Result<SyncCounts, Error> {
        sync(
            &mut self.services,
            desired,
            map_names::SERVICES,
            Stale::Remove,
        )
    }

    /// Makes `LANE_ENDPOINTS` hold exactly `desired` (see
    /// [`crate::kernel_lanes`]). Before `SERVICES` and `ENROLLED`, so the
    /// entries they point at are in place.
    pub fn sync_lane_endpoints(
        &mut self,
        desired: &StdHashMap<LaneKey, LaneEndpoints>,
    ) -> Result<SyncCounts, Error> {
        sync(
            &mut self.lane_endpoints,
            desired,
            map_names::LANE_ENDPOINTS,
            Stale::Remove,
        )
    }

    /// The lane ids of tags, to give new tags theirs.
    pub fn lane_ids_mut(&mut self) -> &mut LaneIds {
        &mut self.lane_ids
    }

    /// The lane ids of tags.
    pub fn lane_ids(&self) -> &LaneIds {
        &self.lane_ids
    }

    /// Every `LANE_ENDPOINTS` entry.
    pub fn lane_endpoint_entries(&self) -> Vec<(LaneKey, LaneEndpoints)> {
        self.lane_endpoints.iter().filter_map(Result::ok).collect()
    }

    /// Makes `ENROLLED` hold `desired` (netns cookie to pod), and with
    /// [`Stale::Remove`] nothing else.
    pub fn sync_enrolled(
        &mut self,
        desired: &StdHashMap<u64, PodValue>,
        stale: Stale,
    ) -> Result<SyncCounts, Error> {
        sync(&mut self.enrolled, desired, map_names::ENROLLED, stale)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let read = |index: u32| -> Result<u64, Error> {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(map_err(map_names::STATS))?;
            Ok(values.iter().sum())
        };
        Ok(Stats {
            redirected: read(stat::REDIRECTED)?,
            fail_open: read(stat::FAIL_OPEN)?,
            origdst_answered: read(stat::ORIGDST_ANSWERED)?,
            origdst_missed: read(stat::ORIGDST_MISSED)?,
            kernel_routed: read(stat::KERNEL_ROUTED)?,
        })
    }

    /// Entries in the per-connection maps (by cookie, by 4-tuple).
    pub fn connection_entries(&self) -> (usize, usize) {
        (
            self.orig_by_cookie.keys().count(),
            self.orig_by_conn.keys().count(),
        )
    }
}

/// TC program `name` of `ebpf`.
fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    action: &str,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program {
            action: action.into(),
            feature: TC_FEATURE,
            source,
        })
}

/// The [`TC_LOOKUP`] program of `ebpf`.
fn tc_lookup_program(ebpf: &mut Ebpf) -> Result<&mut SkLookup, Error> {
    ebpf.program_mut(TC_LOOKUP)
        .ok_or(Error::MissingProgram(TC_LOOKUP))?
        .try_into()
        .map_err(|source| Error::Program {
            action: "find".into(),
            feature: TC_LOOKUP_FEATURE,
            source,
        })
}

/// Loads the TC programs of `ebpf` and [`TC_LOOKUP`] (verifier included).
fn load_tc_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    let load_err = |feature| {
        move |source| Error::Program {
            action: "load".into(),
            feature,
            source,
        }
    };
    for (name, _) in TC_PROGRAMS {
        tc_program(ebpf, name, "find")?
            .load()
            .map_err(load_err(TC_FEATURE))?;
    }
    tc_lookup_program(ebpf)?
        .load()
        .map_err(load_err(TC_LOOKUP_FEATURE))
}

/// A handle of its own on the map pinned as `name` in `pin_dir`: for work
/// that must never wait for the [`Datapath`] lock.
fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<aya::maps::Map, Error> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    aya::maps::Map::from_map_data(data).map_err(map_err(name))
}

/// The `ROUTER` map (the router's address and heartbeat), through a handle
/// of its own: the heartbeat writes it without taking the [`Datapath`]
/// lock, so a slow reconcile can never make the programs fail open.
pub struct RouterMap(Array<MapData, RouterInfo>);

impl RouterMap {
    /// Opens the map pinned in `pin_dir` (by [`Datapath::attach`]).
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        let map = open_pinned(pin_dir, map_names::ROUTER)?;
        Ok(Self(
            Array::try_from(map).map_err(map_err(map_names::ROUTER))?,
        ))
    }

    /// Writes the router's listener and heartbeat.
    pub fn set(&mut self, info: &RouterInfo) -> Result<(), Error> {
        self.0.set(0, info, 0).map_err(map_err(map_names::ROUTER))
    }
}

/// laneway's record of each redirected connection (`ORIG_BY_CONN`, written
/// by `sock_ops`), read by the router straight from the map: one lookup per
/// accepted connection, whatever cgroup the agent itself runs in (the
/// `getsockopt` program answers only processes inside `bpf.cgroup`).
pub struct ConnOrigins(HashMap<MapData, ConnKey, OriginalDst>);

impl ConnOrigins {
    /// Opens the map pinned in `pin_dir` (by [`Datapath::attach`]).
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        let map = open_pinned(pin_dir, map_names::ORIG_BY_CONN)?;
        Ok(Self(
            HashMap::try_from(map).map_err(map_err(map_names::ORIG_BY_CONN))?,
        ))
    }

    /// The record of the connection the router accepted from `peer` (the
    /// pod's socket) on `local` (the router's address), if laneway's
    /// programs redirected it.
    pub fn get(&self, peer: SocketAddr, local: SocketAddr) -> Option<OriginalDst> {
        let key = ConnKey {
            client_addr: service_key(peer.ip(), 0).addr,
            router_addr: service_key(local.ip(), 0).addr,
            client_port: peer.port(),
            router_port: local.port(),
        };
        self.0.get(&key, 0).ok()
    }
}

/// Makes `map` hold `desired`: new and changed entries first, then (with
/// [`Stale::Remove`]) the entries `desired` lacks are removed, so no key in
/// both the old and the new state is ever missing.
fn sync<K, V>(
    map: &mut HashMap<MapData, K, V>,
    desired: &StdHashMap<K, V>,
    name: &'static str,
    stale: Stale,
) -> Result<SyncCounts, Error>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let mut counts = SyncCounts::default();
    for (key, value) in desired {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            map.insert(key, value, 0).map_err(map_err(name))?;
            counts.written += 1;
        }
    }
    if stale == Stale::Keep {
        return Ok(counts);
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.contains_key(k))
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) => counts.removed += 1,
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(counts)
}

/// Unpins (and so detaches, once no process holds them) the links of every
/// generation (an agent's directory under `links_dir`) `remove` names.
fn remove_generations(links_dir: &Path, remove: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return;
    };
    for dir in entries
        .flatten()
        .filter(|e| remove(&e.file_name().to_string_lossy()))
    {
        if let Ok(links) = std::fs::read_dir(dir.path()) {
            for link in links.flatten() {
                match PinnedLink::from_pin(link.path()).map(PinnedLink::unpin) {
                    Ok(_) => {}
                    Err(_) => {
                        let _ = std::fs::remove_file(link.path());
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(dir.path());
    }
}

/// When the agent of `generation` (`PID-MONOTONIC_NS`) started; 0 for a
/// name of another form.
fn generation_started(generation: &str) -> u64 {
    generation
        .split_once('-')
        .and_then(|(_, ns)| ns.parse().ok())
        .unwrap_or(0)
}

/// Removes the pin of a `STATS` map an earlier laneway left with fewer
/// counters than this build has, so the loader makes a new one: aya reuses a
/// pinned map whatever its size, and the programs' new counters would fall
/// past its end (and reading them would fail). The old programs keep the
/// old map until their links go.
fn unpin_outgrown_stats(pin_dir: &Path) {
    let path = pin_dir.join(map_names::STATS);
    if aya::maps::MapInfo::from_pin(&path).is_ok_and(|info| info.max_entries() < stat::COUNT) {
        warn!(path = %path.display(), "the pinned STATS map has fewer counters than this agent's: replacing it (counters restart at 0)");
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Removes everything laneway pinned under `pin_dir`: its maps and links
/// (the programs detach), then the directory. For uninstalling.
pub fn unpin_all(pin_dir: &Path) -> std::io::Result<()> {
    for dir in ["links", TC_LINKS_DIR] {
        remove_generations(&pin_dir.join(dir), |_| true);
        let _ = std::fs::remove_dir(pin_dir.join(dir));
    }
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path())?;
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The map key of a VIP and port.
pub fn service_key(vip: IpAddr, port: u16) -> ServiceKey {
    let addr = match vip {
        IpAddr::V4(v4) => v4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    };
    ServiceKey {
        addr,
        port,
        _pad: 0,
    }
}

/// The socket address recorded in an [`OriginalDst`].
pub fn original_addr(original: &OriginalDst) -> SocketAddr {
    socket_addr(&original.addr, original.port)
}

/// An address in the maps' form (IPv6 network order, IPv4 v4-mapped) and a
/// port as a socket address (IPv4 for v4-mapped).
pub fn socket_addr(addr: &[u32; 4], port: u16) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
}

/// The router's entry: where redirected connects go, with a fresh heartbeat
/// (`heartbeat_ns` from [`monotonic_ns`]; 0 means "gone, fail open now").
pub fn router_info(
    redirect4: Option<std::net::Ipv4Addr>,
    redirect6: Option<std::net::Ipv6Addr>,
    port: u16,
    mark: u32,
    heartbeat_ns: u64,
) -> RouterInfo {
    let addr6 = redirect6.map_or([0; 4], |v6| service_key(IpAddr::V6(v6), 0).addr);
    RouterInfo {
        heartbeat_ns,
        addr6,
        addr4: redirect4.map_or(0, |v4| u32::from_ne_bytes(v4.octets())),
        mark,
        port,
        _pad0: 0,
        _pad1: 0,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_network_order_v4_mapped() {
        let k = service_key("10.96.0.10".parse().unwrap(), 80);
        let bytes: Vec<u8> = k.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]
        );
        let k6 = service_key("fd00::1".parse().unwrap(), 80);
        let bytes: Vec<u8> = k6.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes[0..2], [0xfd, 0]);
        assert_eq!(bytes[15], 1);
    }

    #[test]
    fn original_addr_round_trips() {
        let key = service_key("10.96.0.10".parse().unwrap(), 0);
        let o = OriginalDst {
            addr: key.addr,
            netns_cookie: 1,
            port: 8080,
            family: 2,
            pod_id: 0,
        };
        assert_eq!(original_addr(&o), "10.96.0.10:8080".parse().unwrap());
    }
}

//! `laneway preflight`: can this node run laneway? Checked locally, without
//! the agent.
//!
//! Each check yields a [`Check`] with `pass`, `warn` or `fail`, what was found
//! and, when not `pass`, what to do. A `fail` means the agent cannot work on
//! this node as it is; a `warn` means it works with a caveat.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use crate::{
    admin::api::{Check, Preflight},
    config::{RedirectMode, TcAttach},
};

/// `Check::result` of a check that passed.
pub const PASS: &str = "pass";
/// `Check::result` of a check that passed with a caveat.
pub const WARN: &str = "warn";
/// `Check::result` of a check that failed.
pub const FAIL: &str = "fail";

/// The oldest kernel laneway runs on: the oldest of the kernel matrix
/// (`cargo xtask test --kernel`). Its programs need 5.8 (cgroup
/// getpeername hooks); before 5.14 pods' netns cookies come from
/// [`crate::netns::probe`].
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// Capability bits (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Runs every check.
pub fn run(config: Option<&Path>) -> Preflight {
    let (privileges, privileged) = privileges();
    let mut checks = vec![
        kernel(),
        btf(Path::new("/sys/kernel/btf/vmlinux")),
        cgroup_v2(),
        bpffs(),
        privileges,
        programs(privileged),
        tc_mode(),
        netns_cookie(),
    ];
    checks.extend(conflicts());
    if let Some(path) = config {
        checks.push(configured_mode(path));
    }
    Preflight { checks }
}

/// The redirect mode `path` configures, and whether this node has what it
/// needs.
fn configured_mode(path: &Path) -> Check {
    const NAME: &str = "configured mode";
    let config = match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return check(
                NAME,
                FAIL,
                e.to_string(),
                Some(format!(
                    "fix the config: laneway config check {}",
                    path.display()
                )),
            );
        }
    };
    let mode = match config.router.mode {
        RedirectMode::Socket => return check(NAME, PASS, "socket (cgroup programs)", None),
        RedirectMode::Tc => "tc",
        RedirectMode::Both => "both (socket first, then TC)",
    };
    let missing: Vec<&str> = ["ip", "tc", "iptables"]
        .into_iter()
        .filter(|tool| std::process::Command::new(tool).arg("-V").output().is_err())
        .collect();
    if !missing.is_empty() {
        return check(
            NAME,
            FAIL,
            format!("{mode}: {} not found", missing.join(", ")),
            Some("TC mode sets up routing with iproute2 and iptables: install them".to_owned()),
        );
    }
    let tcx_here = tcx_available() == Some(true);
    let attach = match (config.bpf.tc_attach, tcx_here) {
        (TcAttach::Tcx, false) => {
            return check(
                NAME,
                FAIL,
                format!("{mode}: bpf.tc_attach is tcx, but TCX needs Linux 6.6 or newer"),
                Some("set bpf.tc_attach to auto or netlink".to_owned()),
            );
        }
        (TcAttach::Tcx, true) | (TcAttach::Auto, true) => "TCX links".to_owned(),
        (TcAttach::Netlink, _) | (TcAttach::Auto, false) => {
            format!("clsact filters at pref {}", crate::bpf::TC_PRIORITY)
        }
    };
    check(
        NAME,
        PASS,
        format!(
            "{mode}: the TC programs attach to pods' veths (ingress and egress) as {attach}; ip, tc and iptables found"
        ),
        None,
    )
}

/// How many checks failed.
pub fn failed(preflight: &Preflight) -> usize {
    preflight.checks.iter().filter(|c| c.result == FAIL).count()
}

fn check(name: &str, result: &str, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.to_owned(),
        result: result.to_owned(),
        detail: detail.into(),
        fix,
    }
}

/// The running kernel's release (`6.18.44-...`).
pub fn kernel_release() -> Option<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        return Some(text.trim().to_owned());
    }
    // SAFETY: utsname is plain data; uname fills it or fails.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates the field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// `major.minor` of a kernel release string.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel() -> Check {
    const NAME: &str = "kernel";
    let fix = || {
        Some(format!(
            "upgrade the node's kernel to Linux {}.{} or newer (laneway needs the cgroup \
             getsockopt and getpeername hooks, and is tested from that version on)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ))
    };
    let Some(release) = kernel_release() else {
        return check(NAME, FAIL, "cannot read the kernel release", fix());
    };
    match parse_release(&release) {
        Some(version) if version >= MIN_KERNEL => check(
            NAME,
            PASS,
            format!(
                "Linux {release} ({}.{} or newer needed)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            None,
        ),
        Some(_) => check(
            NAME,
            FAIL,
            format!(
                "Linux {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            fix(),
        ),
        None => check(
            NAME,
            FAIL,
            format!("cannot parse the kernel release {release:?}"),
            fix(),
        ),
    }
}

fn btf(vmlinux: &Path) -> Check {
    const NAME: &str = "btf";
    if vmlinux.exists() {
        check(
            NAME,
            PASS,
            format!("{} is present", vmlinux.display()),
            None,
        )
    } else {
        check(
            NAME,
            WARN,
            format!(
                "{} is missing: the kernel has no BTF type information",
                vmlinux.display()
            ),
            Some(
                "nothing to do for laneway today (it does not use CO-RE); tools such as \
                 `bpftool` show less, and a kernel built with CONFIG_DEBUG_INFO_BTF=y is \
                 recommended"
                    .to_owned(),
            ),
        )
    }
}

fn cgroup_v2() -> Check {
    const NAME: &str = "cgroup v2";
    match crate::cgroup::v2_root() {
        Ok(root) => check(
            NAME,
            PASS,
            format!("cgroup2 is mounted at {}", root.display()),
            None,
        ),
        Err(e) => check(
            NAME,
            FAIL,
            e.to_string(),
            Some(
                "mount a cgroup v2 hierarchy (`mount -t cgroup2 none /sys/fs/cgroup/unified`), \
                 or boot with systemd.unified_cgroup_hierarchy=1"
                    .to_owned(),
            ),
        ),
    }
}

/// Where bpf filesystems are mounted, from `/proc/self/mounts` text.
fn bpffs_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let mount_point = fields.next()?;
            (fields.next()? == "bpf").then(|| mount_point.replace("\\040", " "))
        })
        .collect()
}

fn bpffs_check(mounts: &str) -> Check {
    const NAME: &str = "bpffs";
    const WANT: &str = "/sys/fs/bpf";
    let found = bpffs_mounts(mounts);
    let fix = || {
        Some(format!(
            "mount it: `mount -t bpf bpf {WANT}` (in a DaemonSet, mount the host's {WANT}); \
             laneway runs without it today, but pinning programs and maps needs it"
        ))
    };
    if found.iter().any(|m| m == WANT) {
        check(
            NAME,
            PASS,
            format!("bpf filesystem mounted at {WANT}"),
            None,
        )
    } else if found.is_empty() {
        check(NAME, WARN, "no bpf filesystem is mounted", fix())
    } else {
        check(
            NAME,
            WARN,
            format!(
                "no bpf filesystem at {WANT} (found at {})",
                found.join(", ")
            ),
            fix(),
        )
    }
}

fn bpffs() -> Check {
    match std::fs::read_to_string("/proc/self/mounts") {
        Ok(mounts) => bpffs_check(&mounts),
        Err(e) => check(
            "bpffs",
            WARN,
            format!("cannot read /proc/self/mounts: {e}"),
            None,
        ),
    }
}

/// `CapEff` from `/proc/self/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The privilege check for an effective uid and capability set; also whether
/// loading programs can work.
fn privileges_check(euid: u32, caps: u64) -> (Check, bool) {
    const NAME: &str = "privileges";
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let names = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ];
    let present: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| has(*bit))
        .map(|(_, n)| *n)
        .collect();
    let who = if euid == 0 {
        "root".to_owned()
    } else {
        format!("uid {euid}")
    };
    let held = if present.is_empty() {
        "none of CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN".to_owned()
    } else {
        present.join(", ")
    };
    let detail = format!("{who}, effective capabilities {caps:#018x}: {held}");
    // CAP_SYS_ADMIN also passes the kernel's CAP_BPF checks.
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN");
    }
    let can_load = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    if missing.is_empty() {
        (check(NAME, PASS, detail, None), can_load)
    } else {
        let fix = format!(
            "run as root, or grant {} (the DaemonSet in deploy/ does): the agent loads and \
             attaches BPF programs and enters pod network namespaces",
            missing.join(", ")
        );
        (
            check(
                NAME,
                FAIL,
                format!("{detail}; missing {}", missing.join(", ")),
                Some(fix),
            ),
            can_load,
        )
    }
}

fn privileges() -> (Check, bool) {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    match std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(cap_eff)
    {
        Some(caps) => privileges_check(euid, caps),
        None => (
            check(
                "privileges",
                if euid == 0 { WARN } else { FAIL },
                format!("uid {euid}; cannot read CapEff from /proc/self/status"),
                Some("run as root".to_owned()),
            ),
            euid == 0,
        ),
    }
}

fn programs(privileged: bool) -> Check {
    const NAME: &str = "bpf programs";
    match crate::bpf::Datapath::probe() {
        Ok(names) => check(
            NAME,
            PASS,
            format!("loaded and unloaded {}", names.join(", ")),
            None,
        ),
        Err(e) => {
            let fix = if privileged {
                "the kernel rejected the program named above: it needs the feature named there \
                 (Linux 5.14+ built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF); if a \
                 security module (lockdown, SELinux, seccomp) blocks bpf(2), allow it for \
                 the agent"
            } else {
                "run preflight as root (or with CAP_BPF and CAP_SYS_ADMIN) to load the \
                 programs: see the privileges check"
            };
            check(NAME, FAIL, e.to_string(), Some(fix.to_owned()))
        }
    }
}

/// How TC mode (`router.mode: tc` or `both`) would attach here.
/// Whether this kernel has TCX links (Linux 6.6+); `None` when its version
/// is unknown.
fn tcx_available() -> Option<bool> {
    kernel_release()
        .as_deref()
        .and_then(parse_release)
        .map(|v| v >= (6, 6))
}

fn tc_mode() -> Check {
    const NAME: &str = "tc mode";
    match tcx_available() {
        Some(true) => check(
            NAME,
            PASS,
            "TCX links (Linux 6.6+): attached after other components' programs, detached with the agent",
            None,
        ),
        Some(false) => check(
            NAME,
            PASS,
            "clsact with a cls_bpf filter (no TCX before Linux 6.6)",
            None,
        ),
        None => check(
            NAME,
            WARN,
            "unknown kernel version",
            Some("socket mode does not depend on it".to_owned()),
        ),
    }
}

fn netns_cookie() -> Check {
    const NAME: &str = "netns cookie";
    match crate::netns::so_netns_cookie_here() {
        Ok(cookie) => check(
            NAME,
            PASS,
            format!("SO_NETNS_COOKIE: this network namespace's cookie is {cookie}"),
            None,
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => check(
            NAME,
            PASS,
            "no SO_NETNS_COOKIE (Linux 5.14): the agent learns each pod's cookie from a \
             probe connect seen by its connect4 program, so it must run inside bpf.cgroup \
             (it refuses to start otherwise)",
            None,
        ),
        Err(e) => check(
            NAME,
            FAIL,
            format!("getsockopt(SO_NETNS_COOKIE) failed: {e}"),
            Some("laneway identifies pods by their network-namespace cookie".to_owned()),
        ),
    }
}

/// A program name (as the kernel keeps it: at most 15 bytes) known to
/// conflict with laneway, and what to do about it.
struct Known {
    prefix: &'static str,
    what: &'static str,
    fix: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        prefix: "cil_sock",
        what: "Cilium socket-level load balancing",
        fix: "Cilium socket-level load balancing rewrites ClusterIPs in connect() before \
              laneway sees them: set socketLB.hostNamespaceOnly=true (Helm) or disable \
              bpf-lb-sock, then restart the Cilium agents (with hostNamespaceOnly already \
              set, pods are left alone and this warning can be ignored)",
    },
    Known {
        prefix: "calico_connect",
        what: "Calico connect-time load balancing",
        fix: "Calico's eBPF dataplane rewrites ClusterIPs in connect() before laneway sees \
              them: set bpfConnectTimeLoadBalancing=Disabled in the FelixConfiguration \
              (older Calico: bpfConnectTimeLoadBalancingEnabled=false)",
    },
    Known {
        prefix: "mb_",
        what: "Merbridge",
        fix: "Merbridge redirects meshed pods' connections to their sidecar in connect(): \
              do not enrol namespaces Merbridge manages, or remove Merbridge from the node",
    },
    Known {
        prefix: "cgroup_connect",
        what: "Kmesh",
        fix: "Kmesh takes over the connections of the namespaces it manages in connect(): \
              do not enrol namespaces managed by Kmesh (istio.io/dataplane-mode=Kmesh)",
    },
    Known {
        prefix: "sockops_prog",
        what: "Kmesh",
        fix: "Kmesh takes over the connections of the namespaces it manages: do not enrol \
              namespaces managed by Kmesh (istio.io/dataplane-mode=Kmesh)",
    },
];

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| name.starts_with(k.prefix))
}

/// The cgroup hooks where another program can change what laneway sees.
/// (`enum bpf_attach_type` values: `BPF_CGROUP_INET4_CONNECT`,
/// `BPF_CGROUP_INET6_CONNECT`, `BPF_CGROUP_SOCK_OPS`.)
const HOOKS: &[(u32, &str)] = &[(10, "connect4"), (11, "connect6"), (3, "sock_ops")];

/// `BPF_PROG_QUERY`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
}

/// The ids of the programs attached directly to `cgroup` at `attach_type`.
fn attached(cgroup: &File, attach_type: u32) -> std::io::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut ids = vec![0u32; 64];
    let mut attr = ProgQuery {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or_default(),
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQuery::default()
    };
    // SAFETY: attr is a valid BPF_PROG_QUERY argument of the size given; the
    // kernel writes at most prog_cnt ids into `ids`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQuery,
            std::mem::size_of::<ProgQuery>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    ids.truncate((attr.prog_cnt as usize).min(64));
    Ok(ids)
}

/// Other programs on the cgroup v2 root's connect4/connect6/sock_ops hooks,
/// and known conflicting programs loaded anywhere.
fn conflicts() -> Vec<Check> {
    // Every loaded program: id -> name.
    let mut loaded: Vec<(u32, String)> = Vec::new();
    let mut list_error = None;
    for program in aya::programs::loaded_programs() {
        match program {
            Ok(info) => loaded.push((info.id(), info.name_as_str().unwrap_or_default().to_owned())),
            Err(e) => {
                list_error = Some(e.to_string());
                break;
            }
        }
    }
    let name_of = |id: u32| {
        loaded
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.clone())
    };
    let laneway: Vec<&str> = crate::bpf::Datapath::program_names().collect();

    // Programs attached to the root's hooks.
    let mut on_root: Vec<(String, &str)> = Vec::new();
    let mut query_error = None;
    match crate::cgroup::v2_root()
        .map_err(|e| e.to_string())
        .and_then(|root| {
            File::open(&root).map_err(|e| format!("cannot open {}: {e}", root.display()))
        }) {
        Ok(root) => {
            for (attach_type, hook) in HOOKS {
                match attached(&root, *attach_type) {
                    Ok(ids) => on_root.extend(ids.into_iter().map(|id| {
                        (
                            name_of(id).unwrap_or_else(|| format!("program id {id}")),
                            *hook,
                        )
                    })),
                    Err(e) => {
                        query_error = Some(format!("cannot query the cgroup v2 root: {e}"));
                        break;
                    }
                }
            }
        }
        Err(e) => query_error = Some(e),
    }

    let loaded_names: Vec<String> = loaded.into_iter().map(|(_, name)| name).collect();
    let error = query_error.or(list_error.map(|e| format!("cannot list BPF programs: {e}")));
    conflict_checks(&on_root, &loaded_names, &laneway, error)
}

/// The conflict checks, from the programs attached to the root's hooks
/// (`(name, hook)`), every loaded program's name, laneway's own program
/// names, and why the lookup was incomplete, if it was.
fn conflict_checks(
    on_root: &[(String, &str)],
    loaded: &[String],
    laneway: &[&str],
    error: Option<String>,
) -> Vec<Check> {
    const NAME: &str = "conflicts";
    let mut checks = Vec::new();
    let mut reported: Vec<&str> = Vec::new();
    let mut own = false;
    for (name, hook) in on_root {
        if laneway.contains(&name.as_str()) {
            own = true;
            continue;
        }
        let (what, fix) = match known(name) {
            Some(k) => (k.what, k.fix),
            None if *hook == "sock_ops" => (
                "another sock_ops program",
                "a sock_ops program usually coexists with laneway's; if it redirects \
                 sockets (sockmap acceleration), check that it leaves connections to the \
                 laneway router alone",
            ),
            None => (
                "another connect program",
                "a program that rewrites destinations in connect() before laneway sees \
                 them hides ClusterIPs from laneway: find its owner (`bpftool cgroup tree`) \
                 and restrict it to the host network namespace, or disable it",
            ),
        };
        reported.push(name);
        checks.push(check(
            NAME,
            WARN,
            format!("{what}: {name} is attached to the cgroup v2 root's {hook} hook"),
            Some(fix.to_owned()),
        ));
    }
    // Known conflicting programs loaded but not (or not visibly) attached to the root.
    for name in loaded {
        if reported.contains(&name.as_str()) {
            continue;
        }
        if let Some(k) = known(name) {
            reported.push(name);
            checks.push(check(
                NAME,
                WARN,
                format!("{}: program {name} is loaded", k.what),
                Some(k.fix.to_owned()),
            ));
        }
    }
    if let Some(e) = error {
        checks.push(check(
            NAME,
            WARN,
            e,
            Some("run preflight as root to look for conflicting programs".to_owned()),
        ));
    }
    if checks.is_empty() {
        let detail = if own {
            "only laneway's own programs are on the cgroup v2 root's connect and sock_ops \
             hooks (an agent is running)"
        } else {
            "no other program on the cgroup v2 root's connect4, connect6 or sock_ops hooks"
        };
        checks.push(check(NAME, PASS, detail, None));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.14.0-362.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
        assert!(parse_release("5.10.0-32-amd64").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn bpffs_is_found_in_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert_eq!(bpffs_check(mounts).result, PASS);
        let elsewhere = "bpf /run/bpf bpf rw 0 0\n";
        let c = bpffs_check(elsewhere);
        assert_eq!(c.result, WARN);
        assert!(c.detail.contains("/run/bpf"));
        assert!(c.fix.unwrap().contains("mount -t bpf bpf /sys/fs/bpf"));
        assert_eq!(bpffs_check("").result, WARN);
    }

    #[test]
    fn capabilities_decide_privileges() {
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n"),
            Some(0x1ff_feff_ffff)
        );
        assert_eq!(cap_eff("Name:\tx\n"), None);
        let (c, can_load) = privileges_check(0, 0x1ff_feff_ffff);
        assert_eq!(c.result, PASS);
        assert!(can_load);
        assert!(c.detail.contains("CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN"));
        // CAP_SYS_ADMIN covers CAP_BPF.
        let (c, _) = privileges_check(0, (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN));
        assert_eq!(c.result, PASS);
        let (c, can_load) = privileges_check(1000, 0);
        assert_eq!(c.result, FAIL);
        assert!(!can_load);
        assert!(
            c.detail
                .contains("missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN")
        );
        assert!(c.fix.unwrap().contains("run as root"));
        let (c, can_load) = privileges_check(1000, 1 << CAP_BPF);
        assert_eq!(c.result, FAIL);
        assert!(can_load);
        assert!(c.detail.contains("missing CAP_NET_ADMIN, CAP_SYS_ADMIN"));
    }

    #[test]
    fn btf_missing_is_a_warning() {
        let c = btf(Path::new("/nonexistent/vmlinux"));
        assert_eq!(c.result, WARN);
        assert!(c.fix.is_some());
    }

    #[test]
    fn conflicts_are_reported_with_what_to_do() {
        let laneway = ["connect4", "connect6", "sock_ops"];
        let on_root = vec![
            ("connect4".to_owned(), "connect4"),
            ("cil_sock4_conne".to_owned(), "connect4"),
            ("mystery".to_owned(), "connect6"),
            ("accel".to_owned(), "sock_ops"),
        ];
        let loaded = [
            "connect4".to_owned(),
            "cil_sock4_conne".to_owned(),
            "calico_connect_".to_owned(),
            "unrelated".to_owned(),
        ];
        let checks = conflict_checks(&on_root, &loaded, &laneway, None);
        let details: Vec<&str> = checks.iter().map(|c| c.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "Cilium socket-level load balancing: cil_sock4_conne is attached to the \
                 cgroup v2 root's connect4 hook",
                "another connect program: mystery is attached to the cgroup v2 root's \
                 connect6 hook",
                "another sock_ops program: accel is attached to the cgroup v2 root's \
                 sock_ops hook",
                "Calico connect-time load balancing: program calico_connect_ is loaded",
            ]
        );
        assert!(checks.iter().all(|c| c.result == WARN && c.fix.is_some()));
        assert!(
            checks[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("socketLB.hostNamespaceOnly=true")
        );

        let own = conflict_checks(&on_root[..1], &loaded[..1], &laneway, None);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].result, PASS);
        assert!(own[0].detail.contains("laneway's own programs"));

        let unknown = conflict_checks(&[], &[], &laneway, Some("cannot list: EPERM".into()));
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].result, WARN);
    }

    #[test]
    fn known_conflicts_match_truncated_names() {
        // The kernel keeps 15 bytes of a name: cil_sock4_connect -> cil_sock4_conne.
        assert_eq!(
            known("cil_sock4_conne").unwrap().what,
            "Cilium socket-level load balancing"
        );
        assert_eq!(
            known("calico_connect_").unwrap().what,
            "Calico connect-time load balancing"
        );
        assert_eq!(known("mb_sock_connect").unwrap().what, "Merbridge");
        assert_eq!(known("cgroup_connect4").unwrap().what, "Kmesh");
        assert!(known("connect4").is_none());
        assert!(known("getsockopt").is_none());
    }

    /// Checks the `BPF_PROG_QUERY` layout against the kernel: laneway's own
    /// programs attached to a throwaway child cgroup are found by name.
    /// Needs root; skipped otherwise.
    #[test]
    fn attached_programs_are_found_on_a_cgroup() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let Ok(root) = crate::cgroup::v2_root() else {
            eprintln!("skipped: no cgroup v2");
            return;
        };
        let dir = root.join(format!("laneway-preflight-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("skipped: cannot create {}: {e}", dir.display());
            return;
        }
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/laneway-preflight-test-{}",
            std::process::id()
        ));
        let result = std::panic::catch_unwind(|| {
            let datapath = crate::bpf::Datapath::attach(&dir, &pins).expect("attach");
            let cgroup = File::open(&dir).unwrap();
            let names = |attach_type| -> Vec<String> {
                let ids = attached(&cgroup, attach_type).unwrap();
                aya::programs::loaded_programs()
                    .filter_map(Result::ok)
                    .filter(|p| ids.contains(&p.id()))
                    .map(|p| p.name_as_str().unwrap_or_default().to_owned())
                    .collect()
            };
            assert_eq!(names(10), ["connect4"]);
            assert_eq!(names(11), ["connect6"]);
            assert_eq!(names(3), ["sock_ops"]);
            drop(datapath);
            // The links are pinned: they stay until unpinned.
            assert_eq!(names(10), ["connect4"]);
            crate::bpf::unpin_all(&pins).expect("unpin");
            assert!(attached(&cgroup, 10).unwrap().is_empty());
        });
        let _ = crate::bpf::unpin_all(&pins);
        let _ = std::fs::remove_dir(&dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_config_file_adds_its_mode_and_what_it_needs() {
        let dir = std::env::temp_dir().join(format!("laneway-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("laneway.yaml");
        let mode_check = |text: &str| {
            std::fs::write(&file, text).unwrap();
            configured_mode(&file)
        };
        let socket = mode_check("router: {mode: socket}\n");
        assert_eq!(
            (socket.result.as_str(), socket.detail.as_str()),
            (PASS, "socket (cgroup programs)")
        );
        let netlink = mode_check("router: {mode: tc}\nbpf: {tc_attach: netlink}\n");
        assert_eq!(netlink.result, PASS, "{netlink:?}");
        assert!(
            netlink.detail.contains("clsact filters at pref 19543"),
            "{netlink:?}"
        );
        let bad = mode_check("router: {mode: sideways}\n");
        assert_eq!(bad.result, FAIL);
        assert!(bad.detail.contains("line 1"), "{bad:?}");
        assert!(
            run(Some(&file))
                .checks
                .iter()
                .any(|c| c.name == "configured mode")
        );
        assert!(!run(None).checks.iter().any(|c| c.name == "configured mode"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machine_has_a_new_kernel_and_cgroup_v2() {
        let doc = run(None);
        let by_name = |n: &str| {
            doc.checks
                .iter()
                .find(|c| c.name == n)
                .unwrap_or_else(|| panic!("no {n} check in {doc:?}"))
        };
        assert_eq!(by_name("kernel").result, PASS, "{:?}", by_name("kernel"));
        assert_eq!(
            by_name("cgroup v2").result,
            PASS,
            "{:?}",
            by_name("cgroup v2")
        );
        for c in &doc.checks {
            assert!(
                ["pass", "warn", "fail"].contains(&c.result.as_str()),
                "{c:?}"
            );
            if c.result != PASS {
                assert!(c.fix.is_some(), "no fix for {c:?}");
            }
        }
        assert_eq!(
            failed(&doc),
            doc.checks.iter().filter(|c| c.result == FAIL).count()
        );
    }
}

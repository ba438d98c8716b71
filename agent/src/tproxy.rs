//! TC mode's node side: the transparent listener, and the routing that
//! delivers the packets the TC program marked to it.
//!
//! A packet for a VIP is not local to the node, so even with a socket
//! assigned it would be routed (and forwarded or dropped): an `ip rule` on the
//! mark looks such packets up in a table whose default route is local, as
//! TPROXY setups do. The marked packets are also left untracked by
//! conntrack, so kube-proxy's DNAT of the VIP never rewrites them (the kernel
//! drops a forwarded packet that carries an assigned socket); the router
//! marks its transparent sockets the same, so their replies are untracked
//! too.

use std::{net::SocketAddr, process::Command};

use laneway_common::{TPROXY_MARK, TPROXY_REPLY_MARK};
use tokio::net::TcpListener;

/// The routing table of marked packets.
const TABLE: &str = "15006";

/// Why the node could not be set up for TC mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The running agent's transparent listener could not be taken over.
    #[error("cannot take over the running agent's transparent listener: {message}")]
    Inherit {
        /// What failed.
        message: String,
    },
    /// A command failed.
    #[error("`{command}` failed: {message} (TC mode needs iproute2 and iptables on the node)")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        message: String,
    },
}

/// Runs a command; an error only when it cannot be started.
fn output(program: &str, args: &[&str]) -> Result<std::process::Output, Error> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })
}

fn run(program: &str, args: &[&str]) -> Result<bool, Error> {
    Ok(output(program, args)?.status.success())
}

/// Runs a command that must succeed.
fn must(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = output(program, args)?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("{program} {}", args.join(" ")),
        message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Runs `add` unless `check` succeeds.
fn ensure(program: &str, check: &[&str], add: &[&str]) -> Result<(), Error> {
    if run(program, check)? {
        return Ok(());
    }
    must(program, add)
}

/// The raw-table rules that keep marked packets (and the transparent
/// listener's replies) out of conntrack, as `iptables` arguments after the
/// operation (`-C`, `-I`, `-D`).
fn notrack_rules() -> [(&'static str, String); 2] {
    [
        ("PREROUTING", format!("{TPROXY_MARK:#x}")),
        ("OUTPUT", format!("{TPROXY_REPLY_MARK:#x}")),
    ]
}

fn notrack_rule<'a>(op: &'a str, chain: &'a str, mark: &'a str) -> [&'a str; 10] {
    [
        "-t", "raw", op, chain, "-m", "mark", "--mark", mark, "-j", "NOTRACK",
    ]
}

/// Idempotently: marked packets route locally and skip conntrack.
pub fn route_marked_packets_locally() -> Result<(), Error> {
    let mark = format!("{TPROXY_MARK:#x}");
    let rules = output("ip", &["rule", "show"])?;
    if !String::from_utf8_lossy(&rules.stdout).contains(&format!("lookup {TABLE}")) {
        must(
            "ip",
            &[
                "rule", "add", "fwmark", &mark, "lookup", TABLE, "pref", TABLE,
            ],
        )?;
    }
    must(
        "ip",
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            TABLE,
        ],
    )?;
    for (chain, mark) in notrack_rules() {
        ensure(
            "iptables",
            &notrack_rule("-C", chain, &mark),
            &notrack_rule("-I", chain, &mark),
        )?;
    }
    Ok(())
}

/// Undoes [`route_marked_packets_locally`] (`laneway uninstall`): the
/// `ip rule`, the table's route and the NOTRACK rules. What is not there is
/// skipped. A running agent keeps them (another agent may be taking over),
/// so only uninstall removes them.
pub fn remove_node_setup() -> Result<(), Error> {
    let mark = format!("{TPROXY_MARK:#x}");
    while run(
        "ip",
        &[
            "rule", "del", "fwmark", &mark, "lookup", TABLE, "pref", TABLE,
        ],
    )? {}
    run("ip", &["route", "flush", "table", TABLE])?;
    for (chain, mark) in notrack_rules() {
        while run("iptables", &notrack_rule("-C", chain, &mark))? {
            must("iptables", &notrack_rule("-D", chain, &mark))?;
        }
    }
    Ok(())
}

/// Removes laneway's clsact filters (priority [`crate::bpf::TC_PRIORITY`],
/// programs `tc_ingress` and `tc_egress`) from `interface`'s ingress and
/// egress, if there are any: netlink filters outlive an agent that was
/// killed. Another component's filter at that priority is left alone.
/// Returns whether one was removed.
pub fn remove_tc_filter(interface: &str) -> Result<bool, Error> {
    let mut removed = false;
    for (program, attach) in crate::bpf::TC_PROGRAMS {
        removed |= remove_tc_filter_of(interface, program, attach)?;
    }
    Ok(removed)
}

/// [`remove_tc_filter`] for one program, on the side of `interface` it
/// attaches to.
pub fn remove_tc_filter_of(
    interface: &str,
    program: &str,
    attach: aya::programs::TcAttachType,
) -> Result<bool, Error> {
    let pref = crate::bpf::TC_PRIORITY.to_string();
    let direction = crate::bpf::tc_direction(attach);
    let shown = output(
        "tc",
        &["filter", "show", "dev", interface, direction, "pref", &pref],
    )?;
    if !String::from_utf8_lossy(&shown.stdout).contains(program) {
        return Ok(false);
    }
    must(
        "tc",
        &["filter", "del", "dev", interface, direction, "pref", &pref],
    )?;
    Ok(true)
}

/// [`remove_tc_filter`] on every interface of this network namespace;
/// returns the interfaces it was removed from.
pub fn remove_tc_filters_everywhere() -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for interface in nix::net::if_::if_nameindex()
        .map_err(|e| Error::Command {
            command: "list interfaces".into(),
            message: e.to_string(),
        })?
        .iter()
    {
        let name = interface.name().to_string_lossy().into_owned();
        if remove_tc_filter(&name)? {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The transparent listener: accepts connections to any address (the
/// VIPs), marked so its replies skip conntrack. No SO_REUSEPORT:
/// `bpf_sk_assign` refuses reuseport sockets.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_mark(TPROXY_REPLY_MARK)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

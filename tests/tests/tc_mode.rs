//! What only TC mode has to show: a connection a pod opened before it was
//! enrolled keeps working (its packets are not the router's); a TC program
//! another component installed on the same veth still runs and keeps its
//! place; the program follows a pod's veth when it is recreated and leaves
//! it when the pod leaves; in `both` mode TC catches what the connect hooks
//! did not see. The behaviour suite runs in TC mode (TCX and clsact) in
//! `data_path.rs`. A pod making a new connection per request on few source
//! ports runs in both modes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use laneway::admin::api;
use laneway_tests::{
    Agent, Node, Standard,
    backend::Backend,
    client::{self, Conn},
    in_modes,
    node::Pod,
    standard::{self, Mode},
};

#[test]
fn a_connection_opened_before_enrolment_keeps_working() -> Result<()> {
    let mut node = Node::new()?;
    let (mut scenario, pods) = standard::scenario(&mut node)?;
    scenario.router_extra = "  mode: tc\n".into();
    let _backends: Vec<Backend> = [pods.base, pods.joint1, pods.gray]
        .iter()
        .map(|p| Backend::http(node.pod(*p), 8080))
        .collect::<Result<_>>()?;
    node.install_kube_proxy(&scenario)?;
    let vip = Node::vip(&scenario.services[0]);
    let mut early = Conn::open(node.pod(pods.client), vip)?;
    let r = early.get("/", &[])?;
    assert!(!r.routed(), "no agent yet: the direct way");

    let agent = Agent::start(&node, &scenario)?;
    for i in 0..5 {
        let r = early.get("/", &[("x-mse-tag", "joint1")])?;
        assert_eq!(r.status, 200, "request {i} on the early connection");
        assert!(!r.routed(), "the early connection stays on its path");
    }
    let r = client::get(node.pod(pods.client), vip, &[("x-mse-tag", "joint1")])?;
    assert!(
        r.routed() && r.endpoint() == "reviews-joint1",
        "new connections are steered"
    );
    drop(agent);
    Ok(())
}

/// Whether this kernel has TCX (Linux 6.6), which TC mode attaches with
/// by default; before it, clsact filters.
fn tcx_kernel() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 6)
}

/// `tc -s filter show dev DEV ingress` in the node netns.
fn filters(node: &Node, dev: &str) -> Result<String> {
    let out = node
        .netns
        .exec("tc", &["-s", "filter", "show", "dev", dev, "ingress"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packets counted by the (first) action in `tc -s` output.
fn counted(filters: &str) -> Result<u64> {
    let sent = filters
        .split("Sent ")
        .nth(1)
        .context("no action counters")?;
    let packets = sent
        .split(" pkt")
        .next()
        .unwrap_or("")
        .rsplit(' ')
        .next()
        .unwrap_or("");
    packets
        .trim()
        .parse()
        .with_context(|| format!("packets in {sent:?}"))
}

/// Another component's TC filter on `veth`: its clsact qdisc and, at
/// priority 1, a u32 filter that mirrors every IPv4 packet back to the pod
/// (which drops them), counts them, and lets classification continue (a
/// filter that ends it, e.g. with `ok`, hides the packet from any filter
/// after it, laneway's clsact filter included; TCX runs before clsact).
fn add_foreign_filter(node: &Node, veth: &str) -> Result<()> {
    node.netns
        .exec("tc", &["qdisc", "replace", "dev", veth, "clsact"])?;
    node.netns.exec(
        "tc",
        &[
            "filter", "add", "dev", veth, "ingress", "prio", "1", "protocol", "ip", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", veth, "continue",
        ],
    )?;
    Ok(())
}

#[test]
fn another_components_tc_program_still_runs_and_keeps_its_place() -> Result<()> {
    let s = Standard::start_with(|sc| sc.router_extra = "  mode: tc\n".into())?;
    let client_pod = s.node.pod(s.pods.client);
    let veth = client_pod.veth.as_str();
    // Another component's clsact filter at priority 1: it mirrors every
    // IPv4 packet back to the pod (which drops them) and counts them.
    add_foreign_filter(&s.node, veth)?;
    let before = counted(&filters(&s.node, veth)?)?;
    for _ in 0..5 {
        let r = client::get(client_pod, s.reviews(), &[("x-mse-tag", "gray")])?;
        assert!(
            r.routed() && r.endpoint() == "reviews-gray",
            "still steered: {r:?}"
        );
    }
    let shown = filters(&s.node, veth)?;
    let after = counted(&shown)?;
    assert!(
        after >= before + 5 * 3,
        "the other filter saw the steered packets: {before} -> {after}\n{shown}"
    );
    assert!(
        shown.contains("pref 1 u32"),
        "still at its priority:\n{shown}"
    );
    Ok(())
}

fn start_tc() -> Result<Standard> {
    Standard::start_with(|sc| sc.router_extra = "  mode: tc\n".into())
}

/// Retries a tagged request from `pod` until the router answers it, for up
/// to 3 s.
fn routed_within(s: &Standard, pod: usize) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(r) = client::get(s.node.pod(pod), s.reviews(), &[("x-mse-tag", "joint1")])
            && r.routed()
            && r.endpoint() == "reviews-joint1"
        {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3),
            "not steered within 3 s:\n{}",
            s.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The TC program's row in `laneway status`.
fn tc_program(s: &Standard) -> Result<api::ProgramStatus> {
    laneway_tests::admin::json::<api::Status>(&s.node, &["status"])?
        .programs
        .into_iter()
        .find(|p| p.name == "tc_ingress")
        .context("no tc_ingress in status")
}

#[test]
fn a_recreated_veth_gets_the_program_again() -> Result<()> {
    let s = start_tc()?;
    routed_within(&s, s.pods.client)?;
    let veth = s.node.pod(s.pods.client).veth.clone();
    s.node.recreate_veth(s.pods.client)?;
    routed_within(&s, s.pods.client)?;
    let program = tc_program(&s)?;
    assert!(program.attached_to.contains(&veth), "{program:?}");
    let hook = if tcx_kernel() { "tcx" } else { "clsact" };
    assert!(program.hook.contains(hook), "{program:?}");
    s.agent
        .wait_for_log("attaching the TC program again", Duration::from_secs(1))?;
    Ok(())
}

#[test]
fn a_pod_that_leaves_enrolment_loses_the_program() -> Result<()> {
    let s = start_tc()?;
    let client_veth = s.node.pod(s.pods.client).veth.clone();
    let tagged_veth = s.node.pod(s.pods.client_joint1).veth.clone();
    // The kernel's own list of TCX programs on the veth (this bpftool
    // predates TCX); before Linux 6.6, its clsact filters.
    let attached = |veth: &str| -> Result<bool> {
        if !tcx_kernel() {
            return Ok(filters(&s.node, veth)?.contains("tc_ingress"));
        }
        let (_, programs) = s.node.netns.run(|| {
            aya::programs::SchedClassifier::query_tcx(veth, aya::programs::TcAttachType::Ingress)
        })??;
        Ok(programs
            .iter()
            .any(|p| p.name_as_str() == Some("tc_ingress")))
    };
    assert!(attached(&client_veth)? && attached(&tagged_veth)?);
    let program = tc_program(&s)?;
    assert!(program.attached_to.contains(&client_veth), "{program:?}");

    // The client pod leaves the config.
    s.agent.rewrite_config(|text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(&format!("interface: {client_veth}")))
            .collect();
        assert_eq!(kept.len() + 1, text.lines().count());
        kept.join("\n") + "\n"
    })?;
    assert!(!attached(&client_veth)?, "detached from the pod that left");
    assert!(attached(&tagged_veth)?, "the other pod keeps it");
    let r = client::get(s.node.pod(s.pods.client), s.reviews(), &[])?;
    assert!(!r.routed(), "the pod that left goes the direct way");
    let program = tc_program(&s)?;
    assert_eq!(program.attached_to, tagged_veth);
    Ok(())
}

#[test]
fn with_clsact_a_filter_installed_before_keeps_its_place_and_restarts_leave_one_filter()
-> Result<()> {
    let mut node = Node::new()?;
    let (mut scenario, pods) = standard::scenario(&mut node)?;
    scenario.router_extra = "  mode: tc\n".into();
    scenario.bpf_extra = "  tc_attach: netlink\n".into();
    let _backends: Vec<Backend> = [pods.base, pods.joint1, pods.gray]
        .iter()
        .map(|p| Backend::http(node.pod(*p), 8080))
        .collect::<Result<_>>()?;
    node.install_kube_proxy(&scenario)?;
    let veth = node.pod(pods.client).veth.clone();
    // Another component (a CNI) was there first, at priority 1.
    add_foreign_filter(&node, &veth)?;
    let vip = Node::vip(&scenario.services[0]);
    let steered = |node: &Node| -> Result<bool> {
        let r = client::get(node.pod(pods.client), vip, &[("x-mse-tag", "gray")])?;
        Ok(r.routed() && r.endpoint() == "reviews-gray")
    };
    let laneway_filters = |node: &Node| -> Result<usize> {
        let shown = filters(node, &veth)?;
        Ok(shown.lines().filter(|l| l.contains("tc_ingress")).count())
    };

    let mut agent = Agent::start(&node, &scenario)?;
    assert!(steered(&node)?);
    let shown = filters(&node, &veth)?;
    let foreign = shown.find("pref 1 u32").context(shown.clone())?;
    let ours = shown.find("pref 19543 bpf").context(shown.clone())?;
    assert!(
        foreign < ours,
        "the other filter still runs first:\n{shown}"
    );
    assert!(counted(&shown)? > 0, "and it still sees packets:\n{shown}");

    // A killed agent leaves its filter (it fails open); the next agent
    // replaces it rather than adding a second one.
    agent.kill();
    assert_eq!(laneway_filters(&node)?, 1);
    assert!(!steered(&node)?, "fail-open");
    let agent = Agent::start(&node, &scenario)?;
    assert!(steered(&node)?);
    assert_eq!(laneway_filters(&node)?, 1, "{}", filters(&node, &veth)?);
    assert!(filters(&node, &veth)?.contains("pref 1 u32"));
    drop(agent);
    Ok(())
}

#[test]
fn in_both_mode_tc_steers_what_the_connect_hooks_did_not_see() -> Result<()> {
    let s = Standard::start_with(|sc| sc.router_extra = "  mode: both\n".into())?;
    // A process of the client pod outside the cgroup the programs are
    // attached to (as a pod under another cgroup tree would be): its
    // connect is not rewritten, its SYN meets the TC program.
    let root = laneway_tests::node::cgroup2_root()?;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} curl -sS -i -m 5 \
         -H 'x-mse-tag: joint1' -H 'x-laneway-route: 1' http://{}/",
        root.display(),
        s.node.pod(s.pods.client).netns.path().display(),
        s.reviews()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("x-endpoint: reviews-joint1"), "{text}");
    assert!(
        text.contains("x-laneway-route: decision=tagged"),
        "through the router:\n{text}"
    );
    let client_ip = s.node.pod(s.pods.client).ip;
    assert!(
        text.contains(&format!("x-peer: {client_ip}\r\n")),
        "from the pod's own address:\n{text}"
    );
    // And the socket programs still steer what they see.
    let r = client::get(
        s.node.pod(s.pods.client),
        s.reviews(),
        &[("x-mse-tag", "gray")],
    )?;
    assert!(r.routed() && r.endpoint() == "reviews-gray");
    Ok(())
}

/// The pod's TCP counters that say a connection needed a retransmit: the
/// SYNs sent again (`TcpExtTCPSynRetrans`, `/proc/net/netstat`) and all
/// segments sent again (`Tcp: RetransSegs`, `/proc/net/snmp`).
fn retransmits(pod: &Pod) -> Result<(u64, u64)> {
    let counter = |file: &str, prefix: &str, name: &str| -> Result<u64> {
        let out = pod.netns.exec("cat", &[file])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Each group is two lines: the names, then the values.
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        let (names, values) = (
            lines.next().context(file.to_owned())?,
            lines.next().context(file.to_owned())?,
        );
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .with_context(|| format!("{name} in {file}"))?;
        Ok(values
            .split_whitespace()
            .nth(at)
            .context("value")?
            .parse()?)
    };
    Ok((
        counter("/proc/net/netstat", "TcpExt:", "TCPSynRetrans")?,
        counter("/proc/net/snmp", "Tcp:", "RetransSegs")?,
    ))
}

/// A pod sending one request per connection with `Connection: close` from
/// eight source ports: the router closes first, so its side of each
/// connection lingers in TIME_WAIT with the pod's own 4-tuple (in TC mode
/// the VIP is its local address), and the pod reuses each port long before
/// that ends. Every connection must still be taken at its first SYN: no
/// SYN sent again, nothing retransmitted, every request answered in its
/// lane and its connection closed by the router.
fn new_connections_on_reused_ports_need_no_retransmit(mode: Mode) -> Result<()> {
    const REQUESTS: usize = 200;
    let s = Standard::start_in(mode)?;
    let pod = s.node.pod(s.pods.client);
    pod.netns
        .sysctl("net.ipv4.ip_local_port_range", "40000 40007")?;
    let before = retransmits(pod)?;
    for i in 0..REQUESTS {
        let mut conn = Conn::open(pod, s.reviews()).with_context(|| format!("connection {i}"))?;
        let r = conn
            .get("/", &[("x-mse-tag", "gray"), ("connection", "close")])
            .with_context(|| format!("request {i}"))?;
        assert!(
            r.status == 200 && r.routed() && r.endpoint() == "reviews-gray",
            "request {i}: {r:?}"
        );
        // The router closes first (so the pod holds no TIME_WAIT and may
        // reuse the port at once, as with a server that closes after
        // `Connection: close`).
        assert!(
            conn.closed_within(Duration::from_secs(5))?,
            "request {i}: the router closes after Connection: close"
        );
    }
    let after = retransmits(pod)?;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "SYNs and segments sent again by the pod over {REQUESTS} connections"
    );
    Ok(())
}

in_modes! {
    [socket => Socket, tc => Tc]: [new_connections_on_reused_ports_need_no_retransmit]
}

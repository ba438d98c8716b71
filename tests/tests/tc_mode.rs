//! What only TC mode has to show: a connection a pod opened before it was
//! enrolled keeps working (its packets are not the router's), and a TC
//! program another component installed on the same veth still runs and
//! keeps its place. The behaviour suite runs in TC mode in `data_path.rs`.

use anyhow::{Context, Result};
use laneway_tests::{
    Agent, Node, Standard,
    backend::Backend,
    client::{self, Conn},
    node::NODE_IP,
    standard,
};

fn routed(r: &client::Response) -> bool {
    r.header("x-peer") == Some(&NODE_IP.to_string())
}

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
    assert!(!routed(&r), "no agent yet: the direct way");

    let agent = Agent::start(&node, &scenario)?;
    for i in 0..5 {
        let r = early.get("/", &[("x-mse-tag", "joint1")])?;
        assert_eq!(r.status, 200, "request {i} on the early connection");
        assert!(!routed(&r), "the early connection stays on its path");
    }
    let r = client::get(node.pod(pods.client), vip, &[("x-mse-tag", "joint1")])?;
    assert!(
        routed(&r) && r.endpoint() == "reviews-joint1",
        "new connections are steered"
    );
    drop(agent);
    Ok(())
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

#[test]
fn another_components_tc_program_still_runs_and_keeps_its_place() -> Result<()> {
    let s = Standard::start_with(|sc| sc.router_extra = "  mode: tc\n".into())?;
    let client_pod = s.node.pod(s.pods.client);
    let veth = client_pod.veth.as_str();
    // Another component's filter at priority 1: it mirrors every IPv4 packet
    // back to the pod (which drops them) and counts them.
    s.node.netns.exec(
        "tc",
        &[
            "filter", "add", "dev", veth, "ingress", "prio", "1", "protocol", "ip", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", veth,
        ],
    )?;
    let before = counted(&filters(&s.node, veth)?)?;
    for _ in 0..5 {
        let r = client::get(client_pod, s.reviews(), &[("x-mse-tag", "gray")])?;
        assert!(
            routed(&r) && r.endpoint() == "reviews-gray",
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

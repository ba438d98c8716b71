//! Endpoints see the calling pod, not the node: the router makes its
//! upstream connection for a request from an enrolled pod inside that pod's
//! network namespace, so the endpoint sees the pod's own address (IPv4 and
//! IPv6), a rule on the source address (a NetworkPolicy stand-in) admits
//! exactly the pods it names, idle upstream connections are pooled per pod,
//! and a pod that leaves enrolment has its upstream connections closed. In
//! socket and TC modes (TC mode is IPv4 only).
//!
//! Run as root through `cargo xtask test`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use laneway_tests::{
    Standard, client,
    node::{NODE_IP, Pod},
};

/// How the agent steers pods to the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Socket,
    Tc,
}

/// The standard node with the agent in `mode`.
fn start(mode: Mode) -> Result<Standard> {
    Standard::start_with(|sc| {
        sc.router_extra = match mode {
            Mode::Socket => "  mode: socket\n",
            Mode::Tc => "  mode: tc\n",
        }
        .into();
    })
}

/// One request from `pod` to `to` on a fresh connection, answered 200 by
/// `endpoint` through the router; returns the address the endpoint saw.
fn routed_peer(pod: &Pod, to: SocketAddr, endpoint: &str) -> Result<String> {
    let r = client::get(pod, to, &[])?;
    ensure!(
        r.status == 200 && r.routed() && r.endpoint() == endpoint,
        "{} -> {to}: {r:?}",
        pod.name
    );
    Ok(r.header("x-peer").unwrap_or("-").to_owned())
}

/// Waits (up to 5 s) for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            bail!("not within 5 s: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn the_endpoint_sees_the_calling_pod(mode: Mode) -> Result<()> {
    let s = start(mode)?;
    for pod in [s.pods.client, s.pods.client_joint1] {
        let pod = s.node.pod(pod);
        let seen = routed_peer(pod, s.ratings(), "ratings-base")?;
        assert_eq!(seen, pod.ip.to_string(), "{}'s request", pod.name);
    }
    if mode == Mode::Socket {
        // A service whose endpoint has an IPv6 address, dialled at its
        // IPv6 VIP: the endpoint sees the pod's IPv6 address.
        let vip6: SocketAddr = "[fd00:96::20]:80".parse()?;
        let endpoint = s.node.pod(s.pods.ratings);
        let service = format!(
            "  - name: ratings6\n    vips: [\"{}\"]\n    ports: [{{port: 80, target_port: 8080, protocol: auto}}]\n    endpoints:\n      - {{ip: \"{}\", name: {}}}\npods:\n",
            vip6.ip(),
            endpoint.ip6,
            endpoint.name
        );
        s.agent
            .rewrite_config(|text| text.replacen("pods:\n", &service, 1))?;
        for pod in [s.pods.client, s.pods.client_joint1] {
            let pod = s.node.pod(pod);
            let seen = routed_peer(pod, vip6, "ratings-base")?;
            assert_eq!(seen, pod.ip6.to_string(), "{}'s IPv6 request", pod.name);
        }
    }
    Ok(())
}

fn a_rule_on_the_source_address_admits_only_its_pod(mode: Mode) -> Result<()> {
    let s = start(mode)?;
    let (admitted, other) = (s.node.pod(s.pods.client), s.node.pod(s.pods.client_joint1));
    // In the endpoint's namespace, as a NetworkPolicy admitting only
    // `client` would be enforced.
    let endpoint = &s.node.pod(s.pods.ratings).netns;
    let only_admitted = admitted.ip.to_string();
    let to_the_endpoint = ["-A", "INPUT", "-p", "tcp", "--dport", "8080"];
    for verdict in [
        &["-s", &only_admitted, "-j", "ACCEPT"][..],
        &["-j", "REJECT", "--reject-with", "tcp-reset"],
    ] {
        endpoint.exec("iptables", &[&to_the_endpoint[..], verdict].concat())?;
    }
    for _ in 0..3 {
        routed_peer(admitted, s.ratings(), "ratings-base")?;
        let r = client::get(other, s.ratings(), &[])?;
        assert!(
            r.status >= 500 && r.endpoint().is_empty(),
            "{} was admitted: {r:?}",
            other.name
        );
    }
    Ok(())
}

fn keep_alive_pooling_reuses_upstream_connections_per_pod(mode: Mode) -> Result<()> {
    let s = start(mode)?;
    // `ratings` has one endpoint; its backend counts the connections.
    let backend = &s.backends[3];
    let before = backend.accepted();
    let rounds = |pod: usize| -> Result<()> {
        let pod = s.node.pod(pod);
        for _ in 0..4 {
            // A new client connection each time: only the pool can reuse.
            let seen = routed_peer(pod, s.ratings(), "ratings-base")?;
            ensure!(seen == pod.ip.to_string(), "{}: seen as {seen}", pod.name);
            // The router returns the connection to the pool right after
            // the response; give it that moment.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    rounds(s.pods.client)?;
    assert_eq!(
        backend.accepted() - before,
        1,
        "client's requests share one"
    );
    rounds(s.pods.client_joint1)?;
    assert_eq!(
        backend.accepted() - before,
        2,
        "client-joint1 has its own (the pod's address), reused"
    );
    rounds(s.pods.client)?;
    assert_eq!(backend.accepted() - before, 2, "client's is still pooled");
    Ok(())
}

fn a_pod_that_leaves_enrolment_has_its_upstream_connections_closed(mode: Mode) -> Result<()> {
    let s = start(mode)?;
    let backend = &s.backends[3];
    let (leaving, staying) = (s.node.pod(s.pods.client), s.node.pod(s.pods.client_joint1));
    routed_peer(leaving, s.ratings(), "ratings-base")?;
    routed_peer(staying, s.ratings(), "ratings-base")?;
    eventually("both pods' upstream connections pooled", || {
        backend.open_connections() == 2
    })?;
    let entry = format!("  - {{name: {},", leaving.name);
    s.agent.rewrite_config(|text| {
        text.lines()
            .filter(|l| !l.starts_with(&entry))
            .map(|l| format!("{l}\n"))
            .collect()
    })?;
    eventually("the leaving pod's upstream connection closed", || {
        backend.open_connections() == 1
    })?;
    // The staying pod's connection is the one left, and still reused.
    let accepted = backend.accepted();
    routed_peer(staying, s.ratings(), "ratings-base")?;
    assert_eq!(
        backend.accepted(),
        accepted,
        "the staying pod's one is reused"
    );
    Ok(())
}

/// `router.upstream_source: node` keeps the old way: every pod's requests
/// reach the endpoint from the node's address, on one shared pool.
#[test]
fn with_upstream_source_node_the_endpoint_sees_the_node() -> Result<()> {
    let s = Standard::start_with(|sc| sc.router_extra = "  upstream_source: node\n".into())?;
    let backend = &s.backends[3];
    let before = backend.accepted();
    for pod in [s.pods.client, s.pods.client_joint1] {
        let seen = routed_peer(s.node.pod(pod), s.ratings(), "ratings-base")?;
        assert_eq!(seen, NODE_IP.to_string());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backend.accepted() - before, 1, "one pool for both pods");
    Ok(())
}

/// One `#[test]` per mode and test function.
macro_rules! in_modes {
    ($($mode:ident => $variant:ident),* $(,)?) => {$(
        mod $mode {
            #[test]
            fn the_endpoint_sees_the_calling_pod() -> anyhow::Result<()> {
                super::the_endpoint_sees_the_calling_pod(super::Mode::$variant)
            }

            #[test]
            fn a_rule_on_the_source_address_admits_only_its_pod() -> anyhow::Result<()> {
                super::a_rule_on_the_source_address_admits_only_its_pod(super::Mode::$variant)
            }

            #[test]
            fn keep_alive_pooling_reuses_upstream_connections_per_pod() -> anyhow::Result<()> {
                super::keep_alive_pooling_reuses_upstream_connections_per_pod(super::Mode::$variant)
            }

            #[test]
            fn a_pod_that_leaves_enrolment_has_its_upstream_connections_closed()
            -> anyhow::Result<()> {
                super::a_pod_that_leaves_enrolment_has_its_upstream_connections_closed(
                    super::Mode::$variant,
                )
            }
        }
    )*};
}

in_modes!(socket => Socket, tc => Tc);

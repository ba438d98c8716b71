//! Lanes hold when the agent does not: while no live router answers (agent
//! SIGKILLed, or SIGSTOPped so its heartbeat goes stale), the connect
//! programs pick an endpoint of the caller's lane (else base) themselves,
//! so the kube-proxy stand-in, which spreads over every lane, never sees
//! those connects. `protocol: tcp` ports are routed that way always. In TC
//! mode `tc_ingress` does the same for the pods' SYNs (a DNAT, undone on
//! the replies by `tc_egress`), and a flow it routed stays on its endpoint
//! when the router comes back.
//!
//! The node: enrolled client pods of lane base, joint1, gray and joint2
//! (a lane no service has endpoints in); service `reviews` (HTTP) and
//! `reviews-tcp` (`protocol: tcp`) with endpoints base, base2, joint1 and
//! gray; `ratings` with a base endpoint only.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use laneway_tests::{
    Agent, Node, Scenario, ServiceSpec,
    backend::Backend,
    client::{self, Conn, LoadCounts, Response},
};

/// Clients: pod name, tag, and the `reviews` endpoints its lane may reach.
const CLIENTS: [(&str, Option<&str>, &[&str]); 4] = [
    ("client", None, &["reviews-base", "reviews-base2"]),
    ("client-joint1", Some("joint1"), &["reviews-joint1"]),
    ("client-gray", Some("gray"), &["reviews-gray"]),
    // No service has a joint2 endpoint: base.
    (
        "client-joint2",
        Some("joint2"),
        &["reviews-base", "reviews-base2"],
    ),
];

/// The node, its backends and the agent. Dropped in field order.
struct Lanes {
    agent: Agent,
    _backends: Vec<Backend>,
    /// Pod indices of [`CLIENTS`], in that order.
    clients: Vec<usize>,
    /// Pod index of `reviews-base2`.
    base2: usize,
    reviews: SocketAddr,
    reviews_tcp: SocketAddr,
    ratings: SocketAddr,
    node: Node,
}

impl Lanes {
    fn start() -> Result<Self> {
        Self::start_with("", |_| Ok(()))
    }

    /// The same node, the agent in TC mode (`router.mode: tc`).
    fn start_tc() -> Result<Self> {
        Self::start_with("  mode: tc\n", |_| Ok(()))
    }

    /// TC mode with clsact filters, as on kernels before 6.6
    /// (`bpf.tc_attach: netlink`).
    fn start_tc_netlink() -> Result<Self> {
        Self::start_scenario(
            |sc| {
                sc.router_extra = "  mode: tc\n".into();
                sc.bpf_extra = "  tc_attach: netlink\n".into();
            },
            |_| Ok(()),
        )
    }

    /// Like [`Lanes::start`] with `router_extra` under `router:` in the
    /// agent's config, running `before_agent` on the node first.
    fn start_with(
        router_extra: &str,
        before_agent: impl FnOnce(&Node) -> Result<()>,
    ) -> Result<Self> {
        Self::start_scenario(|sc| sc.router_extra = router_extra.into(), before_agent)
    }

    /// Like [`Lanes::start`], adjusting the scenario with `adjust`.
    fn start_scenario(
        adjust: impl FnOnce(&mut Scenario),
        before_agent: impl FnOnce(&Node) -> Result<()>,
    ) -> Result<Self> {
        let mut node = Node::new()?;
        let clients: Vec<usize> = CLIENTS
            .iter()
            .map(|(name, _, _)| node.add_pod(name))
            .collect::<Result<_>>()?;
        let names = [
            "reviews-base",
            "reviews-base2",
            "reviews-joint1",
            "reviews-gray",
            "ratings-base",
        ];
        let servers: Vec<usize> = names
            .iter()
            .map(|n| node.add_pod(n))
            .collect::<Result<_>>()?;
        let lanes = vec![
            (servers[0], None),
            (servers[1], None),
            (servers[2], Some("joint1".into())),
            (servers[3], Some("gray".into())),
        ];
        let service = |name: &str,
                       vip: &str,
                       port: u16,
                       protocol: &'static str,
                       endpoints: Vec<(usize, Option<String>)>|
         -> Result<ServiceSpec> {
            Ok(ServiceSpec {
                name: name.into(),
                vip: vip.parse()?,
                vip6: None,
                port,
                target_port: 8080,
                protocol,
                policy: None,
                endpoints,
            })
        };
        let mut scenario = Scenario {
            services: vec![
                service("reviews", "10.96.0.10", 80, "auto", lanes.clone())?,
                service("reviews-tcp", "10.96.0.13", 81, "tcp", lanes)?,
                service(
                    "ratings",
                    "10.96.0.11",
                    80,
                    "auto",
                    vec![(servers[4], None)],
                )?,
            ],
            enrolled: clients
                .iter()
                .zip(CLIENTS)
                .map(|(pod, (_, tag, _))| (*pod, tag.map(Into::into)))
                .collect(),
            ..Scenario::default()
        };
        adjust(&mut scenario);
        let backends = servers
            .iter()
            .map(|p| Backend::http(node.pod(*p), 8080))
            .collect::<Result<_>>()?;
        // The old fail-open path: DNAT spreading over every lane.
        node.install_kube_proxy(&scenario)?;
        before_agent(&node)?;
        let agent = Agent::start(&node, &scenario)?;
        Ok(Self {
            agent,
            _backends: backends,
            clients,
            base2: servers[1],
            reviews: Node::vip(&scenario.services[0]),
            reviews_tcp: Node::vip(&scenario.services[1]),
            ratings: Node::vip(&scenario.services[2]),
            node,
        })
    }

    /// Its config line for `reviews-base2`, and the same line terminating.
    fn base2_lines(&self) -> (String, String) {
        let p = self.node.pod(self.base2);
        let line = format!("{{ip: {}, name: {}}}", p.ip, p.name);
        let terminating = line.replace('}', ", terminating: true}");
        (line, terminating)
    }
}

/// Runs `during` while every pod in `pods` sends requests to `to`
/// ([`client::under_load`]'s two workers each); the counts, in `pods`' order.
fn under_load_from(
    node: &Node,
    pods: &[usize],
    to: SocketAddr,
    during: impl FnOnce() -> Result<()>,
) -> Result<Vec<LoadCounts>> {
    let Some((first, rest)) = pods.split_first() else {
        during()?;
        return Ok(Vec::new());
    };
    let mut inner = Vec::new();
    let counts = client::under_load(node.pod(*first), to, || {
        inner = under_load_from(node, rest, to, during)?;
        Ok(())
    })?;
    inner.insert(0, counts);
    Ok(inner)
}

/// Answers by endpoints outside `allowed`, with their counts.
fn outside<'a>(counts: &'a LoadCounts, allowed: &[&str]) -> Vec<(&'a str, u64)> {
    counts
        .by_endpoint
        .iter()
        .filter(|(e, _)| !allowed.contains(&e.as_str()))
        .map(|(e, n)| (e.as_str(), *n))
        .collect()
}

/// One request on a fresh connection from `pod`; checks it is answered 200
/// by one of `allowed`, and that the app sees the VIP it dialled.
fn ask(node: &Node, pod: usize, to: SocketAddr, allowed: &[&str]) -> Result<Response> {
    let mut conn = Conn::open(node.pod(pod), to)?;
    let r = conn.get("/", &[])?;
    let from = &node.pod(pod).name;
    ensure!(r.status == 200, "{from} -> {to}: {r:?}");
    ensure!(
        allowed.contains(&r.endpoint()),
        "{from} -> {to} answered by {} (its lane: {allowed:?})",
        r.endpoint()
    );
    ensure!(
        conn.stream().peer_addr()? == to,
        "{from}: getpeername shows {} instead of the VIP {to}",
        conn.stream().peer_addr()?
    );
    Ok(r)
}

/// A request that did not go through the router (it did not answer the
/// route question, see [`Response::routed`]) and came straight from the
/// pod: the backend saw the pod's own address.
fn from_the_pod(node: &Node, pod: usize, r: &Response) -> bool {
    !r.routed() && r.header("x-peer") == Some(&node.pod(pod).ip.to_string())
}

/// Waits (up to 2 s) until a new connection from the base client goes
/// through the router again, after `what`.
fn routed_again(l: &Lanes, what: &str) -> Result<()> {
    let started = Instant::now();
    while !ask(&l.node, l.clients[0], l.reviews, CLIENTS[0].2)?.routed() {
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "the router did not take over again after {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A request on `conn`, from the gray client, tagged joint1 (the router
/// would send it to reviews-joint1): answered by `endpoint` straight from
/// the pod, as the connection's first request was.
fn stays_on(l: &Lanes, conn: &mut Conn, endpoint: &str, when: &str) -> Result<()> {
    let r = conn.get("/", &[("x-mse-tag", "joint1")])?;
    ensure!(r.status == 200, "{when}: {r:?}");
    ensure!(
        r.endpoint() == endpoint && from_the_pod(&l.node, l.clients[2], &r),
        "{when}: the connection left {endpoint} (the router took it?): {r:?}"
    );
    Ok(())
}

fn kernel_routed_total(node: &Node) -> Result<u64> {
    let metrics = laneway_tests::admin::scrape(node)?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("laneway_kernel_routed_connections_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no kernel-routed counter in\n{metrics}"))
}

mod lanes_hold {
    use super::*;

    #[test]
    fn a_killed_agent_keeps_every_lane_under_load() -> Result<()> {
        killed_agent_keeps_every_lane_under_load(Lanes::start()?)
    }

    #[test]
    fn in_tc_mode_a_killed_agent_keeps_every_lane_under_load() -> Result<()> {
        killed_agent_keeps_every_lane_under_load(Lanes::start_tc()?)
    }

    #[test]
    fn a_stopped_agent_keeps_every_lane_and_the_router_takes_over_again_on_resume() -> Result<()> {
        stopped_agent_keeps_every_lane(Lanes::start()?)
    }

    #[test]
    fn in_tc_mode_a_stopped_agent_keeps_every_lane_and_the_router_takes_over_again_on_resume()
    -> Result<()> {
        stopped_agent_keeps_every_lane(Lanes::start_tc()?)
    }

    /// A clean stop leaves the clsact filters in place (as TCX links stay
    /// pinned), so the kernel keeps every lane once the agent is gone.
    #[test]
    fn with_clsact_filters_an_agent_stopped_by_sigterm_keeps_every_lane() -> Result<()> {
        let mut l = Lanes::start_tc_netlink()?;
        let status = l.agent.terminate()?;
        assert!(status.success(), "{status}\n{}", l.agent.log());
        let loaders = &l.clients[..3];
        let after = under_load_from(&l.node, loaders, l.reviews, || {
            std::thread::sleep(Duration::from_millis(1000));
            Ok(())
        })?;
        for (i, (name, _, allowed)) in CLIENTS[..3].iter().enumerate() {
            let a = &after[i];
            assert!(
                outside(a, allowed).is_empty(),
                "{name} was answered by another lane: {:?}",
                outside(a, allowed)
            );
            assert_eq!(a.failed, 0, "{name}: failures with no agent");
            assert!(a.ok > 20, "{name}: the load ran: {}", a.ok);
        }
        Ok(())
    }

    fn killed_agent_keeps_every_lane_under_load(mut l: Lanes) -> Result<()> {
        let loaders = &l.clients[..3];
        // Under load from base, joint1 and gray: the agent is SIGKILLed.
        let during = under_load_from(&l.node, loaders, l.reviews, || {
            std::thread::sleep(Duration::from_millis(500));
            l.agent.kill();
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        })?;
        // Then, with no agent at all.
        let after = under_load_from(&l.node, loaders, l.reviews, || {
            std::thread::sleep(Duration::from_millis(1000));
            Ok(())
        })?;
        for (i, (name, _, allowed)) in CLIENTS[..3].iter().enumerate() {
            let (d, a) = (&during[i], &after[i]);
            eprintln!(
                "{name}: across the kill {} ok ({} not through the router), {} failed \
                 (connections the kill cut); after it {} ok, {} failed; by endpoint {:?} then {:?}",
                d.ok, d.direct, d.failed, a.ok, a.failed, d.by_endpoint, a.by_endpoint
            );
            assert!(
                outside(d, allowed).is_empty() && outside(a, allowed).is_empty(),
                "{name} was answered by another lane: {:?} {:?}",
                outside(d, allowed),
                outside(a, allowed)
            );
            assert!(d.direct > 0, "{name}: the kill took effect during the load");
            // Each of the two workers loses the request it had in flight on
            // the router, and any connect the dying agent's listener still
            // queued in the few milliseconds before its process was gone
            // (3 or 4 per pod here); once it is gone, none (below).
            assert!(
                d.failed <= 10,
                "{name}: {} failed across the kill",
                d.failed
            );
            assert_eq!(a.failed, 0, "{name}: failures once the kill took effect");
            assert!(a.ok > 20, "{name}: the load ran after the kill: {}", a.ok);
            assert_eq!(a.direct, a.ok, "{name}: no router, every answer is direct");
        }
        Ok(())
    }

    fn stopped_agent_keeps_every_lane(l: Lanes) -> Result<()> {
        let loaders = &l.clients[..3];
        let counts = under_load_from(&l.node, loaders, l.reviews, || {
            l.agent.pause();
            // The heartbeat goes stale within HEARTBEAT_TIMEOUT_NS (800 ms).
            std::thread::sleep(Duration::from_millis(1000));
            for (pod, (_, _, allowed)) in l.clients.iter().zip(CLIENTS) {
                for _ in 0..10 {
                    let r = ask(&l.node, *pod, l.reviews, allowed)?;
                    ensure!(
                        from_the_pod(&l.node, *pod, &r),
                        "not routed in the kernel: {r:?}"
                    );
                }
            }
            l.agent.resume();
            routed_again(&l, "SIGCONT")?;
            for (pod, (_, _, allowed)) in l.clients.iter().zip(CLIENTS) {
                for _ in 0..10 {
                    let r = ask(&l.node, *pod, l.reviews, allowed)?;
                    ensure!(r.routed(), "not through the router after SIGCONT: {r:?}");
                }
            }
            Ok(())
        })?;
        for ((name, _, allowed), c) in CLIENTS.iter().zip(&counts) {
            eprintln!(
                "{name}: {} ok ({} not through the router), {} failed; by endpoint {:?}",
                c.ok, c.direct, c.failed, c.by_endpoint
            );
            assert!(
                outside(c, allowed).is_empty(),
                "{name} was answered by another lane: {:?}",
                outside(c, allowed)
            );
            // Requests the frozen router held (the workers' connections
            // made before the heartbeat went stale) were served once it
            // thawed; the new connections while it was stopped are the
            // checked ones above.
            assert_eq!(c.failed, 0, "{name}: failures");
        }
        Ok(())
    }

    #[test]
    fn a_tcp_port_is_routed_in_the_kernel_while_the_router_is_live() -> Result<()> {
        let l = Lanes::start()?;
        for (pod, (name, _, allowed)) in l.clients.iter().zip(CLIENTS) {
            for _ in 0..10 {
                let r = ask(&l.node, *pod, l.reviews_tcp, allowed)?;
                assert!(
                    from_the_pod(&l.node, *pod, &r),
                    "{name}: the backend saw {:?}, not the pod's address",
                    r.header("x-peer")
                );
            }
        }
        // Counted (nothing else was routed in the kernel on this node): the
        // router's L4 passthrough would also reach the backend from the
        // pod's address, and answer no route question, but count nothing.
        assert!(kernel_routed_total(&l.node)? >= 40);
        // `laneway maps` shows what the kernel picked from.
        let maps: laneway::admin::api::Maps = laneway_tests::admin::json(&l.node, &["maps"])?;
        let vip = l.reviews_tcp.to_string();
        let joint1 = maps
            .lane_endpoints
            .iter()
            .find(|e| e.vip == vip && e.tag.as_deref() == Some("joint1"))
            .ok_or_else(|| anyhow::anyhow!("no joint1 entry for {vip}: {maps:?}"))?;
        assert_eq!(joint1.endpoints.len(), 1, "{joint1:?}");
        let base = maps
            .lane_endpoints
            .iter()
            .find(|e| e.vip == vip && e.lane == 0);
        assert_eq!(base.map(|e| e.endpoints.len()), Some(2), "{maps:?}");
        let pod_lane = maps
            .enrolled
            .iter()
            .find(|e| e.pod.as_deref() == Some("default/client-joint1"));
        assert_eq!(pod_lane.map(|e| e.lane), Some(joint1.lane), "{maps:?}");
        // The HTTP port of the same endpoints still goes through the router,
        // which routes each request by its tag header.
        let r = client::get(
            l.node.pod(l.clients[0]),
            l.reviews,
            &[("x-mse-tag", "gray")],
        )?;
        assert!(r.routed(), "{r:?}");
        assert_eq!(r.endpoint(), "reviews-gray");
        Ok(())
    }

    /// In TC mode a connection `tc_ingress` routed in the kernel stays on its
    /// endpoint until it closes, when the router comes back: after SIGCONT,
    /// and after a new agent replaced a SIGKILLed one (the TC links and the
    /// flows' records are pinned).
    #[test]
    fn in_tc_mode_a_kernel_routed_flow_stays_on_its_endpoint_when_the_router_comes_back()
    -> Result<()> {
        let mut l = Lanes::start_tc()?;
        let (gray, allowed) = (l.clients[2], CLIENTS[2].2);
        let open = |l: &Lanes| -> Result<(Conn, String)> {
            let mut conn = Conn::open(l.node.pod(gray), l.reviews)?;
            let r = conn.get("/", &[])?;
            ensure!(
                r.status == 200 && allowed.contains(&r.endpoint()),
                "gray: {r:?}"
            );
            ensure!(
                from_the_pod(&l.node, gray, &r),
                "not routed in the kernel: {r:?}"
            );
            ensure!(
                conn.stream().peer_addr()? == l.reviews,
                "the pod sees the VIP"
            );
            Ok((conn, r.endpoint().to_owned()))
        };

        l.agent.pause();
        std::thread::sleep(Duration::from_millis(1000));
        let (mut conn, endpoint) = open(&l)?;
        l.agent.resume();
        routed_again(&l, "SIGCONT")?;
        for _ in 0..10 {
            stays_on(&l, &mut conn, &endpoint, "after SIGCONT")?;
        }
        drop(conn);

        l.agent.kill();
        let (mut conn, endpoint) = open(&l)?;
        let config = l.agent.config.clone();
        l.agent = Agent::start_with(&l.node, config)?;
        routed_again(&l, "a new agent started")?;
        for _ in 0..10 {
            stays_on(&l, &mut conn, &endpoint, "with the new agent")?;
        }
        // New connections from the same pod go through the router.
        let r = client::get(l.node.pod(gray), l.reviews, &[("x-mse-tag", "joint1")])?;
        ensure!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");
        Ok(())
    }

    /// An agent upgraded over the pins of an older one, whose `STATS` map
    /// had fewer counters, still counts its kernel routes.
    #[test]
    fn an_agent_over_an_older_agents_pins_counts_kernel_routes() -> Result<()> {
        let l = Lanes::start_with("", |node| {
            let dir = node.pin_path();
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("STATS").display().to_string();
            let args =
                format!("map create {path} type percpu_array key 4 value 8 entries 4 name STATS");
            let out = std::process::Command::new("bpftool")
                .args(args.split(' '))
                .output()?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        })?;
        let (pod, (_, _, allowed)) = (l.clients[1], CLIENTS[1]);
        for _ in 0..10 {
            ask(&l.node, pod, l.reviews_tcp, allowed)?;
        }
        assert!(kernel_routed_total(&l.node)? >= 10);
        Ok(())
    }

    #[test]
    fn kernel_routing_shows_the_vip_skips_terminating_endpoints_and_falls_back_to_base()
    -> Result<()> {
        let mut l = Lanes::start()?;
        let (client, joint1, joint2) = (l.clients[0], l.clients[1], l.clients[3]);
        let bases = ["reviews-base", "reviews-base2"];
        // Both base endpoints serve: the kernel picks either (40 draws miss
        // one of two with probability 2^-39).
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(
                ask(&l.node, client, l.reviews_tcp, &bases)?
                    .endpoint()
                    .to_owned(),
            );
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // base2 turns terminating: from the reload on, never picked.
        let (line, terminating) = l.base2_lines();
        l.agent
            .rewrite_config(|text| text.replace(&line, &terminating))?;
        for _ in 0..40 {
            ask(&l.node, client, l.reviews_tcp, &["reviews-base"])?;
        }
        // No agent: the HTTP port is routed in the kernel too.
        l.agent.kill();
        for _ in 0..20 {
            let r = ask(&l.node, client, l.reviews, &["reviews-base"])?;
            assert!(from_the_pod(&l.node, client, &r), "{r:?}");
            // A lane without endpoints in the service: base.
            ask(&l.node, joint2, l.reviews, &["reviews-base"])?;
            ask(&l.node, joint1, l.ratings, &["ratings-base"])?;
            ask(&l.node, joint1, l.reviews, &["reviews-joint1"])?;
        }
        // What the JVM does: an IPv6 socket dialling the v4-mapped VIP
        // (connect6); getpeername6 shows that VIP.
        let std::net::IpAddr::V4(vip) = l.reviews.ip() else {
            anyhow::bail!("reviews has an IPv4 VIP");
        };
        let mapped = SocketAddr::new(vip.to_ipv6_mapped().into(), l.reviews.port());
        for _ in 0..10 {
            let r = ask(&l.node, joint1, mapped, &["reviews-joint1"])?;
            assert!(from_the_pod(&l.node, joint1, &r), "{r:?}");
        }
        Ok(())
    }
}

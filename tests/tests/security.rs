//! No open doors: the router relays only redirected connections to known
//! services (also in TC mode), the admin socket is root only, request tags
//! can be limited to an allowlist and are ignored from callers that are not
//! enrolled, a tag never reaches another service's endpoints, clients cannot
//! mint metric series, and per-connection state and the agent's memory stay
//! bounded under churn.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    time::Duration,
};

use anyhow::{Context, Result};
use laneway::admin::api;
use laneway_tests::{
    Pod, Standard,
    agent::binary,
    backend::Backend,
    client,
    node::{NODE_IP, ROUTER_PORT, TPROXY_PORT},
};

fn maps(s: &Standard) -> Result<api::Maps> {
    let out = std::process::Command::new(binary())
        .args(["maps", "-o", "json", "--socket"])
        .arg(s.node.admin_socket())
        .output()?;
    serde_json::from_slice(&out.stdout).context("maps json")
}

/// Sends a request on a connection from `from` to `to` (which must reach
/// the router) and asserts the router closed it without a byte, relayed
/// nothing to any backend, and logged `why`.
fn refused(s: &Standard, from: &Pod, to: SocketAddr, why: &str) -> Result<()> {
    let served_before: u64 = s.backends.iter().map(|b| b.accepted()).sum();
    let mut stream = from
        .netns
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))??;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the router answered a connection to {to}: {}",
        String::from_utf8_lossy(&answer)
    );
    s.agent.wait_for_log(why, Duration::from_secs(2))?;
    let served_after: u64 = s.backends.iter().map(|b| b.accepted()).sum();
    assert_eq!(
        served_before, served_after,
        "nothing was relayed to a backend"
    );
    Ok(())
}

/// Whether one line of the agent's log has both `message` and `destination`.
fn logged_for(s: &Standard, message: &str, destination: &str) -> bool {
    s.agent
        .log()
        .lines()
        .any(|l| l.contains(message) && l.contains(destination))
}

#[test]
fn the_router_refuses_a_connection_without_an_original_destination() -> Result<()> {
    let s = Standard::start()?;
    let bystander = s.node.pod(s.pods.bystander);
    // A pod that dials the router's port itself, with conntrack off for the
    // connection: neither laneway's programs nor netfilter know an original
    // destination for it.
    let (pod, node) = (bystander.ip.to_string(), NODE_IP.to_string());
    let port = ROUTER_PORT.to_string();
    for (chain, addrs) in [
        ("PREROUTING", ["-s", &pod, "-d", &node, "--dport", &port]),
        ("OUTPUT", ["-s", &node, "-d", &pod, "--sport", &port]),
    ] {
        let mut args = vec!["-t", "raw", "-A", chain, "-p", "tcp"];
        args.extend(addrs);
        args.extend(["-j", "CT", "--notrack"]);
        s.node.netns.exec("iptables", &args)?;
    }
    refused(
        &s,
        bystander,
        SocketAddr::new(NODE_IP.into(), ROUTER_PORT),
        "connection without an original destination: closed",
    )
}

#[test]
fn the_router_refuses_an_original_destination_that_is_no_service() -> Result<()> {
    let s = Standard::start()?;
    let bystander = s.node.pod(s.pods.bystander);
    // netfilter sends the bystander's connection to a real endpoint
    // (not its service's VIP) to the router: the router must not relay it
    // there, or it would reach any address the node can.
    let base = s.node.pod(s.pods.base);
    // (DNAT to the node's address: REDIRECT would pick the veth's, and the
    // node side of a pod's veth has no IPv4 address.)
    let endpoint = base.ip;
    let router = SocketAddr::new(NODE_IP.into(), ROUTER_PORT);
    s.node.dnat(
        "PREROUTING",
        Some(bystander.ip.into()),
        SocketAddr::new(endpoint.into(), 8080),
        router,
    )?;
    refused(
        &s,
        bystander,
        SocketAddr::new(base.ip.into(), 8080),
        "destination is no service: closed",
    )?;
    assert!(
        logged_for(&s, "destination is no service", &format!("{endpoint}:8080")),
        "{}",
        s.agent.log()
    );
    Ok(())
}

#[test]
fn the_transparent_listener_refuses_a_connection_to_itself() -> Result<()> {
    let s = Standard::start_with(|sc| sc.router_extra = "  mode: tc\n".into())?;
    // In TC mode a connection's local address is its destination; dialled
    // directly, that is the node's own address, no service.
    refused(
        &s,
        s.node.pod(s.pods.bystander),
        SocketAddr::new(NODE_IP.into(), TPROXY_PORT),
        "destination is no service: closed",
    )?;
    assert!(
        logged_for(
            &s,
            "destination is no service",
            &format!("{NODE_IP}:{TPROXY_PORT}")
        ),
        "{}",
        s.agent.log()
    );
    Ok(())
}

#[test]
fn the_admin_socket_is_root_only() -> Result<()> {
    let s = Standard::start()?;
    let mode = std::fs::metadata(s.node.admin_socket())?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    Ok(())
}

#[test]
fn tags_outside_the_allowlist_are_ignored_and_not_forwarded() -> Result<()> {
    let s = Standard::start()?;
    s.agent
        .rewrite_config(|text| format!("{text}tags:\n  allowed: [gray]\n"))?;
    let client = s.node.pod(s.pods.client);
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.endpoint(), "reviews-base");
    assert_eq!(
        r.header("x-seen-tag"),
        Some("-"),
        "a tag that is not allowed is not forwarded"
    );
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "gray")])?;
    assert_eq!(r.endpoint(), "reviews-gray");
    Ok(())
}

#[test]
fn random_request_tags_do_not_mint_metric_series() -> Result<()> {
    let s = Standard::start()?;
    let mut conn = client::Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    for i in 0..1_000 {
        let r = conn.get("/", &[("x-mse-tag", &format!("probe{i:04}"))])?;
        assert_eq!(r.endpoint(), "reviews-base", "an unknown lane falls back");
    }
    conn.get("/", &[("x-mse-tag", "joint1")])?;
    let text = laneway_tests::admin::scrape(&s.node)?;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("laneway_requests_total{"))
        .collect();
    // One series for all the made-up lanes, one for the real one.
    assert_eq!(series.len(), 2, "{series:#?}");
    assert!(
        series.iter().any(|l| l.ends_with(
            "{service=\"default/reviews\",tag=\"_other\",decision=\"fallback\",status_class=\"2xx\"} 1000"
        )),
        "{series:#?}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("tag=\"joint1\",decision=\"tagged\"")),
        "{series:#?}"
    );
    assert!(!text.contains("probe"), "request content in /metrics");
    Ok(())
}

#[test]
fn tags_from_callers_that_are_not_enrolled_are_ignored_and_not_passed_on() -> Result<()> {
    let s = Standard::start()?;
    // The bystander is not enrolled; netfilter sends its connections to the
    // reviews VIP to the router anyway (as a REDIRECT setup would), where
    // no pod is known by its address.
    let bystander = s.node.pod(s.pods.bystander);
    let vip = s.reviews();
    s.node.dnat(
        "PREROUTING",
        Some(bystander.ip.into()),
        vip,
        SocketAddr::new(NODE_IP.into(), ROUTER_PORT),
    )?;
    let asks = [
        ("x-mse-tag", "joint1"),
        ("baggage", "x-mse-tag=gray,user=7"),
    ];
    let r = client::get(bystander, vip, &asks)?;
    assert_eq!(
        r.header("x-peer"),
        Some(NODE_IP.to_string().as_str()),
        "through the router: {r:?}"
    );
    assert_eq!(r.endpoint(), "reviews-base", "{r:?}");
    assert!(
        r.header("x-laneway-route")
            .unwrap_or("")
            .contains("decision=base"),
        "{r:?}"
    );
    assert_eq!(
        r.header("x-seen-tag"),
        Some("-"),
        "the tag header is not passed on"
    );
    assert_eq!(
        r.header("x-seen-baggage"),
        Some("user=7"),
        "nor is the baggage member, or the next hop would take it"
    );
    // Stripping off: the same requests pick their lane.
    s.agent
        .rewrite_config(|text| format!("{text}tags:\n  strip_from_unknown_callers: false\n"))?;
    let r = client::get(bystander, vip, &asks)?;
    assert_eq!(r.endpoint(), "reviews-joint1", "{r:?}");
    assert_eq!(r.header("x-seen-baggage"), Some("user=7,x-mse-tag=joint1"));
    Ok(())
}

#[test]
fn a_tag_never_reaches_an_endpoint_of_another_service() -> Result<()> {
    let mut s = Standard::start()?;
    // Namespace `other` has its own `reviews`, whose only endpoint is in lane
    // joint2; the default namespace's `reviews` has no joint2 endpoint.
    let other = s.node.add_pod("other-reviews")?;
    let _backend = Backend::http(s.node.pod(other), 8080)?;
    let other_vip: SocketAddr = "10.96.0.20:80".parse()?;
    let service = format!(
        "  - name: reviews\n    namespace: other\n    vips: [{}]\n    ports: [{{port: 80, target_port: 8080}}]\n    endpoints:\n      - {{ip: {}, name: other-reviews, tag: joint2}}\npods:\n",
        other_vip.ip(),
        s.node.pod(other).ip
    );
    s.agent
        .rewrite_config(|text| text.replacen("pods:\n", &service, 1))?;
    let client = s.node.pod(s.pods.client);
    let r = client::get(client, other_vip, &[("x-mse-tag", "joint2")])?;
    assert_eq!(r.endpoint(), "other-reviews", "the lane exists: {r:?}");
    let mut conn = client::Conn::open(client, s.reviews())?;
    for _ in 0..20 {
        let r = conn.get("/", &[("x-mse-tag", "joint2"), ("x-laneway-route", "1")])?;
        assert_eq!(r.endpoint(), "reviews-base", "{r:?}");
        let route = r.header("x-laneway-route").unwrap_or("");
        assert!(
            route.contains("decision=fallback") && route.contains("service=default/reviews"),
            "{route}"
        );
    }
    Ok(())
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens `per_worker` connections from `pod` to `vip` on each of four
/// threads and closes them three ways: of every eight, one carries a real
/// request that the router closes (`connection: close`, FIN from its side
/// first), one a keep-alive request the client closes with FIN once
/// answered, and six are reset right after the connect. The requests churn
/// the router's HTTP and upstream pool path; the resets leave no TIME_WAIT,
/// and the client-closed share (12,500 in 100,000) stays well inside the
/// pod's ephemeral ports while its TIME_WAITs last. Returns how many
/// connects or requests failed.
fn churn(pod: &Pod, vip: SocketAddr, per_worker: usize) -> usize {
    let one = move |i: usize| -> Result<()> {
        let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        match i % 8 {
            0 => {
                c.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")?;
                let mut answer = Vec::new();
                c.read_to_end(&mut answer)?;
                anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "router-closed request");
            }
            4 => {
                let r = client::Conn::over(c, vip)?.get("/", &[])?;
                anyhow::ensure!(r.status == 200, "client-closed request: {}", r.status);
            }
            // Reset on close: no TIME_WAIT to run out of ports.
            _ => client::reset_on_close(&c)?,
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(move || {
                    pod.netns
                        .run(|| (0..per_worker).filter(|&i| one(i).is_err()).count())
                        .unwrap_or(per_worker)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(per_worker))
            .sum()
    })
}

#[test]
fn per_connection_state_returns_to_baseline_after_100k_short_connections() -> Result<()> {
    let s = Standard::start()?;
    let vip = s.reviews();
    let pod = s.node.pod(s.pods.client);
    // Warm up (the pool, the runtime's threads and the allocator's arenas
    // reach their working size), then take the baseline.
    assert_eq!(churn(pod, vip, 500), 0, "warm-up connections failed");
    std::thread::sleep(Duration::from_secs(1));
    let before = maps(&s)?;
    let fds_before = open_fds(s.agent.pid());
    let rss_before = s.agent.rss_kib();
    assert_eq!(churn(pod, vip, 25_000), 0, "connects or requests failed");
    std::thread::sleep(Duration::from_secs(1));
    let after = maps(&s)?;
    assert!(after.stats.redirected >= before.stats.redirected + 100_000);
    assert!(
        after.orig_by_cookie.len() <= before.orig_by_cookie.len() + 5,
        "ORIG_BY_COOKIE grew from {} to {}",
        before.orig_by_cookie.len(),
        after.orig_by_cookie.len()
    );
    assert!(
        after.orig_by_conn.len() <= before.orig_by_conn.len() + 5,
        "ORIG_BY_CONN grew from {} to {}",
        before.orig_by_conn.len(),
        after.orig_by_conn.len()
    );
    let fds_after = open_fds(s.agent.pid());
    assert!(
        fds_after <= fds_before + 5,
        "agent fds {fds_before} -> {fds_after}"
    );
    let rss_after = s.agent.rss_kib();
    eprintln!("agent RSS {rss_before} -> {rss_after} KiB");
    // A leak of 80 bytes a connection would be 8 MiB here.
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "agent RSS grew from {rss_before} to {rss_after} KiB over 100,000 connections"
    );
    // And it still routes.
    let r = client::get(pod, vip, &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.endpoint(), "reviews-joint1");
    Ok(())
}

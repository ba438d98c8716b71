//! The data path, end to end on the real kernel: real programs, real
//! sockets, real HTTP, on a node built from network namespaces. The same
//! behaviour suite runs in every redirect mode (`socket`, `tc`, `both`), as
//! `data_path::<mode>::<test>`; the TC-only cases are in `tc_mode.rs`.
//!
//! Run as root through `cargo xtask test` (one test at a time: each attaches
//! its own programs to its own cgroup, which the test process joins).

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;
use laneway_tests::{
    Standard,
    client::{self, Conn},
    in_modes,
    standard::Mode,
};
use rand::RngCore;

fn tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);

    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.status, 200);
    assert_eq!(r.endpoint(), "reviews-joint1");
    assert_eq!(
        r.header("x-seen-tag"),
        Some("joint1"),
        "tag forwarded upstream"
    );
    assert!(
        r.header("x-laneway-route")
            .unwrap_or("")
            .contains("decision=tagged")
    );
    assert!(r.routed());

    let r = client::get(client, s.reviews(), &[("x-mse-tag", "gray")])?;
    assert_eq!(r.endpoint(), "reviews-gray");

    // A lane with no endpoint in this service: base, and the tag travels on.
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint2")])?;
    assert_eq!(r.endpoint(), "reviews-base");
    assert_eq!(r.header("x-seen-tag"), Some("joint2"));
    assert!(
        r.header("x-laneway-route")
            .unwrap_or("")
            .contains("decision=fallback")
    );

    // ratings has only base: joint1 falls back there.
    let r = client::get(client, s.ratings(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.endpoint(), "ratings-base");
    // The apply's log line counts the pods enrolled by whichever mode.
    assert!(
        s.agent.log().contains("pods_enrolled=2 pods_wanted=2"),
        "{}",
        s.agent.log()
    );
    Ok(())
}

fn untagged_requests_never_reach_tagged_endpoints(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);
    for _ in 0..40 {
        let r = client::get(client, s.reviews(), &[])?;
        assert_eq!(r.endpoint(), "reviews-base", "{:?}", r.headers);
        assert_eq!(r.header("x-seen-tag"), Some("-"), "no tag invented");
    }
    Ok(())
}

fn tagged_caller_pod_stays_in_its_lane_without_a_header(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let caller = s.node.pod(s.pods.client_joint1);
    for _ in 0..10 {
        let r = client::get(caller, s.reviews(), &[])?;
        assert_eq!(r.endpoint(), "reviews-joint1");
        assert_eq!(
            r.header("x-seen-tag"),
            Some("joint1"),
            "lane propagated upstream"
        );
        assert!(
            r.header("x-laneway-route")
                .unwrap_or("")
                .contains("decision=tagged")
        );
    }
    // An explicit header still wins over the caller's own lane.
    let r = client::get(caller, s.reviews(), &[("x-mse-tag", "gray")])?;
    assert_eq!(r.endpoint(), "reviews-gray");
    Ok(())
}

fn baggage_member_selects_the_lane(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);
    let r = client::get(client, s.reviews(), &[("baggage", "user=1,x-mse-tag=gray")])?;
    assert_eq!(r.endpoint(), "reviews-gray");
    assert_eq!(r.header("x-seen-tag"), Some("gray"));
    Ok(())
}

fn one_keep_alive_connection_routes_each_request_by_its_own_tag(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let plan = [
        (Some("joint1"), "reviews-joint1"),
        (None, "reviews-base"),
        (Some("gray"), "reviews-gray"),
        (Some("joint1"), "reviews-joint1"),
        (Some("nope"), "reviews-base"),
        (Some("gray"), "reviews-gray"),
    ];
    for round in 0..3 {
        for (tag, expected) in plan {
            let headers: Vec<(&str, &str)> = tag.map(|t| ("x-mse-tag", t)).into_iter().collect();
            let r = conn.get("/", &headers)?;
            assert_eq!(r.status, 200);
            assert_eq!(r.endpoint(), expected, "round {round}, tag {tag:?}");
        }
    }
    Ok(())
}

/// A client that connects and stays quiet past the sniff timeout (a pool
/// connecting ahead of its first request) is still routed per request on an
/// `auto` port: the router waits for the first word instead of taking the
/// silence for a server-first protocol for the life of the connection.
fn a_client_quiet_before_its_first_request_stays_in_its_lane(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    // Three times the default `router.sniff_timeout` (300 ms).
    std::thread::sleep(Duration::from_millis(900));
    for (tag, expected) in [("joint1", "reviews-joint1"), ("gray", "reviews-gray")] {
        let r = conn.get("/", &[("x-mse-tag", tag)])?;
        assert_eq!(r.status, 200);
        assert_eq!(r.endpoint(), expected, "tag {tag}");
        assert!(r.routed(), "routed per request, not passed through");
    }
    Ok(())
}

fn the_app_sees_the_vip_it_dialled(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    // The direct (DNAT) path shows the VIP too: the connection must be the
    // router's for the check to mean anything.
    let r = conn.get("/", &[("x-laneway-route", "1")])?;
    assert!(r.routed(), "went through the router");
    assert_eq!(
        conn.stream().peer_addr()?,
        s.reviews(),
        "getpeername shows the VIP"
    );
    Ok(())
}

fn ipv6_and_v4_mapped_connects_are_steered(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);
    let vip6: SocketAddr = "[fd00:96::10]:80".parse()?;
    let r = client::get(client, vip6, &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.endpoint(), "reviews-joint1");
    assert!(
        r.header("x-laneway-route").is_some(),
        "went through laneway"
    );

    // What the JVM does: an IPv6 socket dialling ::ffff:10.96.0.10.
    let mapped = SocketAddr::new(
        IpAddr::V6(match s.reviews().ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }),
        80,
    );
    let mut conn = Conn::open(client, mapped)?;
    let r = conn.get("/", &[("x-mse-tag", "gray"), ("x-laneway-route", "1")])?;
    assert_eq!(r.endpoint(), "reviews-gray");
    assert!(r.routed());
    assert_eq!(
        conn.stream().peer_addr()?,
        mapped,
        "getpeername6 shows the mapped VIP"
    );
    Ok(())
}

fn pods_not_enrolled_are_left_alone(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let r = client::get(
        s.node.pod(s.pods.bystander),
        s.reviews(),
        &[("x-mse-tag", "joint1")],
    )?;
    assert_eq!(r.status, 200);
    assert!(!r.routed(), "bystander went through the router");
    assert!(r.header("x-laneway-route").is_none());
    Ok(())
}

fn echo_round_trip(s: &Standard, payload: &[u8]) -> Result<Vec<u8>> {
    let mut stream = client::connect(s.node.pod(s.pods.client), s.echo())?;
    let writer = {
        let mut w = stream.try_clone()?;
        let payload = payload.to_vec();
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&payload)?;
            // Half-close: the echo server answers everything, then closes.
            w.shutdown(Shutdown::Write)
        })
    };
    let mut back = Vec::new();
    stream.read_to_end(&mut back)?;
    writer.join().expect("writer")?;
    Ok(back)
}

fn unknown_protocols_pass_through_byte_for_byte(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let mut random = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut random);
    random[0] = 0x00; // surely not an HTTP method
    assert_eq!(
        echo_round_trip(&s, &random)?,
        random,
        "1 MiB of random bytes"
    );

    // A TLS ClientHello prefix (record type 0x16, version 3.1).
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
    ];
    hello.extend((0..233).map(|i| i as u8));
    assert_eq!(echo_round_trip(&s, &hello)?, hello, "TLS ClientHello");

    let redirected = s.agent.log().matches("redirected connection").count();
    assert!(
        redirected >= 2,
        "the echo connections went through the router:\n{}",
        s.agent.log()
    );
    Ok(())
}

fn malformed_and_oversized_requests_get_400_and_431_and_the_router_keeps_serving(
    mode: Mode,
) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);

    let mut conn = Conn::open(client, s.reviews())?;
    conn.send_raw(b"GET / HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")?;
    assert_eq!(conn.read_response()?.status, 400);

    let mut conn = Conn::open(client, s.reviews())?;
    let huge = "a".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n");
    // The router may answer and close before it has read everything.
    let _ = conn.send_raw(req.as_bytes());
    assert_eq!(conn.read_response()?.status, 431);

    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.endpoint(), "reviews-joint1", "still serving");
    Ok(())
}

/// Retries a fresh request until it succeeds or `limit` passes; returns the
/// response and how long it took. An attempt that gets no answer within
/// 100 ms (a frozen router) is given up, so the time measured is within
/// about 120 ms of the moment the path changed.
fn first_success(s: &Standard, limit: Duration) -> Result<(client::Response, Duration)> {
    let started = Instant::now();
    loop {
        let attempt = Conn::open(s.node.pod(s.pods.client), s.reviews()).and_then(|mut c| {
            c.stream()
                .set_read_timeout(Some(Duration::from_millis(100)))?;
            c.get("/", &[])
        });
        match attempt {
            Ok(r) if r.status == 200 => return Ok((r, started.elapsed())),
            _ if started.elapsed() > limit => anyhow::bail!("no success within {limit:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn fails_open_within_a_second_when_the_router_stops_and_steers_again_after(
    mode: Mode,
) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let (r, _) = first_success(&s, Duration::from_secs(1))?;
    assert!(r.routed());

    // A frozen agent: programs attached, nobody accepting.
    s.agent.pause();
    let stopped = Instant::now();
    let (r, _) = first_success(&s, Duration::from_secs(3))?;
    let took = stopped.elapsed();
    assert!(!r.routed(), "went the direct (DNAT) way");
    assert!(took < Duration::from_secs(1), "fail-open took {took:?}");

    s.agent.resume();
    std::thread::sleep(Duration::from_millis(500));
    let (r, _) = first_success(&s, Duration::from_secs(2))?;
    assert!(r.routed(), "steered again once the router is back");
    // The programs counted the connections they let go the direct way.
    let metrics = laneway_tests::admin::scrape(&s.node)?;
    let fail_open = metrics
        .lines()
        .find_map(|l| l.strip_prefix("laneway_fail_open_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(fail_open.is_some_and(|n| n >= 1), "{metrics}");
    Ok(())
}

fn a_killed_agent_leaves_pods_on_the_direct_path_at_once(mode: Mode) -> Result<()> {
    let mut s = Standard::start_in(mode)?;
    s.agent.kill();
    // The programs stay attached (pinned), but nobody listens: they fail open.
    let pinned = std::fs::read_dir(s.node.pin_path().join("links"))?
        .flatten()
        .map(|generation| {
            std::fs::read_dir(generation.path())
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum::<usize>();
    assert_eq!(
        pinned, 5,
        "connect4/6, sock_ops, getpeername4/6 stay pinned"
    );
    let (r, took) = first_success(&s, Duration::from_secs(1))?;
    assert!(!r.routed());
    assert!(took < Duration::from_millis(500), "took {took:?}");

    let shown = |args: &[&str]| -> Result<String> {
        let out = s.node.netns.exec(args[0], &args[1..])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let veth = &s.node.pod(s.pods.client).veth;
    let filters = || -> Result<String> {
        let ingress = shown(&["tc", "filter", "show", "dev", veth, "ingress"])?;
        Ok(ingress + &shown(&["tc", "filter", "show", "dev", veth, "egress"])?)
    };
    if mode == Mode::TcNetlink {
        // clsact filters outlive the process (TCX links are pinned).
        let filters = filters()?;
        assert!(
            filters.contains("tc_ingress") && filters.contains("tc_egress"),
            "{filters}"
        );
    }

    // `laneway uninstall`, run in the node's network namespace (with the
    // host's /sys, where bpffs is), detaches them and removes what TC mode
    // set up there.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", s.node.netns.path().display()))
        .arg(laneway_tests::agent::binary())
        .args(["uninstall", "--pin-path"])
        .arg(s.node.pin_path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.node.pin_path().exists());
    if mode.tc() {
        let filters = filters()?;
        assert!(
            !filters.contains("tc_ingress") && !filters.contains("tc_egress"),
            "{filters}"
        );
        let rules = shown(&["ip", "rule", "show"])?;
        assert!(!rules.contains("lookup 15006"), "{rules}");
        let raw = shown(&["iptables", "-t", "raw", "-S"])?;
        assert!(!raw.contains("NOTRACK"), "{raw}");
    }
    Ok(())
}

fn sigterm_fails_open_and_exits_cleanly(mode: Mode) -> Result<()> {
    let mut s = Standard::start_in(mode)?;
    let status = s.agent.terminate()?;
    assert!(status.success(), "exit status {status}:\n{}", s.agent.log());
    let (r, _) = first_success(&s, Duration::from_secs(1))?;
    assert!(!r.routed());
    Ok(())
}

fn config_reload_changes_routing_without_dropping_a_connection(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    assert_eq!(
        conn.get("/", &[("x-mse-tag", "joint1")])?.endpoint(),
        "reviews-joint1"
    );

    // Retag: the joint1 pod becomes joint2.
    s.agent.rewrite_config(|text| {
        text.replace(
            "name: reviews-joint1, tag: joint1",
            "name: reviews-joint1, tag: joint2",
        )
    })?;
    assert_eq!(
        conn.get("/", &[("x-mse-tag", "joint1")])?.endpoint(),
        "reviews-base",
        "same connection"
    );
    assert_eq!(
        conn.get("/", &[("x-mse-tag", "joint2")])?.endpoint(),
        "reviews-joint1"
    );

    // A broken edit is rejected and routing stays as it was.
    std::fs::write(&s.agent.config, "services: [oops\n")?;
    s.agent
        .wait_for_log("config reload rejected", Duration::from_secs(5))?;
    assert!(s.agent.log().contains("line"), "the error names the line");
    assert_eq!(
        conn.get("/", &[("x-mse-tag", "joint2")])?.endpoint(),
        "reviews-joint1"
    );

    // A file caught between its truncation and its new content reads
    // empty: that is no config to apply (before: every service and pod
    // dropped, and this request answered by the router itself; CI saw it
    // when the poll met the write above half done).
    std::fs::write(&s.agent.config, "")?;
    s.agent
        .wait_for_log("the file is empty", Duration::from_secs(5))?;
    assert_eq!(
        conn.get("/", &[("x-mse-tag", "joint2")])?.endpoint(),
        "reviews-joint1"
    );
    Ok(())
}

fn sighup_reloads_the_config(mode: Mode) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let s = Standard::start_in(mode)?;
    let client = s.node.pod(s.pods.client);
    assert_eq!(
        client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?.endpoint(),
        "reviews-joint1"
    );
    // Rewrite the file in place with the same length and modification time,
    // so that only the signal can make the agent read it again.
    let text = std::fs::read_to_string(&s.agent.config)?;
    let edited = text.replace(
        "name: reviews-joint1, tag: joint1",
        "name: reviews-joint1, tag: joint2",
    );
    assert_eq!(edited.len(), text.len());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.agent.config)?;
    let modified = file.metadata()?.modified()?;
    file.write_all_at(edited.as_bytes(), 0)?;
    file.set_modified(modified)?;
    drop(file);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !s.agent.log().contains("config reloaded"),
        "the agent must not have noticed the edit by itself"
    );

    s.agent.hangup();
    s.agent
        .wait_for_log("config reloaded", Duration::from_secs(5))?;
    assert!(
        s.agent
            .log()
            .lines()
            .any(|l| l.contains("config reloaded") && l.contains("SIGHUP")),
        "{}",
        s.agent.log()
    );
    assert_eq!(
        client::get(client, s.reviews(), &[("x-mse-tag", "joint2")])?.endpoint(),
        "reviews-joint1"
    );
    Ok(())
}

fn a_service_with_no_serving_endpoint_answers_503_naming_it(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    s.agent.rewrite_config(|text| {
        assert!(text.contains("name: ratings-base}"), "{text}");
        text.replace("name: ratings-base}", "name: ratings-base, serving: false}")
    })?;
    let client = s.node.pod(s.pods.client);
    let r = client::get(client, s.ratings(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text().trim(),
        "laneway: service default/ratings has no serving endpoint for tag joint1"
    );
    let r = client::get(client, s.ratings(), &[])?;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("for untagged requests"), "{}", r.text());
    // The other service is untouched.
    assert_eq!(
        client::get(client, s.reviews(), &[])?.endpoint(),
        "reviews-base"
    );
    Ok(())
}

/// The router's own upstream connects are never sent back to the router,
/// even when an endpoint is itself a service VIP: the router's socket for
/// the enrolled client is made in the client's (enrolled) network
/// namespace, so only its mark keeps the connect programs off it. And
/// someone asking to enrol the router's network namespace (a host-network
/// pod) is refused, with the reason.
fn the_routers_own_connects_are_never_redirected(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let base = s.node.pod(s.pods.base).ip;
    // An `alias` service whose one endpoint is the reviews VIP, the node's
    // own netns enrolled, and a kube-proxy rule sending the client's
    // connects to that VIP to the base endpoint only.
    s.agent.rewrite_config(|text| {
        format!(
            "{}  - {{name: host-network, netns: {}}}\n",
            text.replace(
                "\npods:\n",
                "\n  - name: alias\n    vips: [10.96.0.30]\n    ports: [{port: 80}]\n    \
                 endpoints:\n      - {ip: 10.96.0.10, name: reviews-vip}\npods:\n",
            ),
            s.node.netns.path().display()
        )
    })?;
    assert!(
        s.agent
            .log()
            .contains("not enrolled: its network namespace is the agent's own"),
        "{}",
        s.agent.log()
    );
    s.node.dnat(
        "PREROUTING",
        Some(s.node.pod(s.pods.client).ip.into()),
        s.reviews(),
        SocketAddr::new(base.into(), 8080),
    )?;
    let r = client::get(
        s.node.pod(s.pods.client),
        "10.96.0.30:80".parse()?,
        &[("x-mse-tag", "joint1")],
    )?;
    assert_eq!(
        r.endpoint(),
        "reviews-base",
        "the kube-proxy way, not laneway's: {} {}",
        r.status,
        r.text()
    );
    let metrics = laneway_tests::admin::scrape(&s.node)?;
    let routed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("laneway_requests_total{"))
        .collect();
    assert_eq!(routed.len(), 1, "one request, routed once: {routed:?}");
    assert!(
        routed[0].contains("service=\"default/alias\""),
        "{routed:?}"
    );
    Ok(())
}

/// The test node is sealed: neither a pod nor the node has a route off the
/// machine, so a redirect that fails cannot send a packet out.
fn the_test_node_has_no_route_out(mode: Mode) -> Result<()> {
    let s = Standard::start_in(mode)?;
    let outside: SocketAddr = "192.0.2.1:80".parse()?;
    let err = client::connect(s.node.pod(s.pods.client), outside)
        .expect_err("a pod reached an outside address");
    let io = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    assert_eq!(io, Some(std::io::ErrorKind::NetworkUnreachable), "{err:#}");
    let route = s
        .node
        .netns
        .command("ip")
        .args(["route", "get", "192.0.2.1"])
        .output()?;
    assert!(!route.status.success(), "the node netns routes outside");
    Ok(())
}

in_modes! {
    socket => Socket: [tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base, untagged_requests_never_reach_tagged_endpoints, tagged_caller_pod_stays_in_its_lane_without_a_header, baggage_member_selects_the_lane, one_keep_alive_connection_routes_each_request_by_its_own_tag, a_client_quiet_before_its_first_request_stays_in_its_lane, the_app_sees_the_vip_it_dialled, pods_not_enrolled_are_left_alone, unknown_protocols_pass_through_byte_for_byte, malformed_and_oversized_requests_get_400_and_431_and_the_router_keeps_serving, fails_open_within_a_second_when_the_router_stops_and_steers_again_after, a_killed_agent_leaves_pods_on_the_direct_path_at_once, sigterm_fails_open_and_exits_cleanly, config_reload_changes_routing_without_dropping_a_connection, ipv6_and_v4_mapped_connects_are_steered, sighup_reloads_the_config, a_service_with_no_serving_endpoint_answers_503_naming_it, the_test_node_has_no_route_out, the_routers_own_connects_are_never_redirected],
    tc => Tc: [tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base, untagged_requests_never_reach_tagged_endpoints, tagged_caller_pod_stays_in_its_lane_without_a_header, baggage_member_selects_the_lane, one_keep_alive_connection_routes_each_request_by_its_own_tag, a_client_quiet_before_its_first_request_stays_in_its_lane, the_app_sees_the_vip_it_dialled, pods_not_enrolled_are_left_alone, unknown_protocols_pass_through_byte_for_byte, malformed_and_oversized_requests_get_400_and_431_and_the_router_keeps_serving, fails_open_within_a_second_when_the_router_stops_and_steers_again_after, a_killed_agent_leaves_pods_on_the_direct_path_at_once, sigterm_fails_open_and_exits_cleanly, config_reload_changes_routing_without_dropping_a_connection],
    tc_netlink => TcNetlink: [tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base, tagged_caller_pod_stays_in_its_lane_without_a_header, one_keep_alive_connection_routes_each_request_by_its_own_tag, the_app_sees_the_vip_it_dialled, pods_not_enrolled_are_left_alone, unknown_protocols_pass_through_byte_for_byte, malformed_and_oversized_requests_get_400_and_431_and_the_router_keeps_serving, fails_open_within_a_second_when_the_router_stops_and_steers_again_after, a_killed_agent_leaves_pods_on_the_direct_path_at_once, sigterm_fails_open_and_exits_cleanly],
    both => Both: [tag_header_reaches_the_lane_and_unknown_tags_fall_back_to_base, untagged_requests_never_reach_tagged_endpoints, tagged_caller_pod_stays_in_its_lane_without_a_header, baggage_member_selects_the_lane, one_keep_alive_connection_routes_each_request_by_its_own_tag, the_app_sees_the_vip_it_dialled, pods_not_enrolled_are_left_alone, unknown_protocols_pass_through_byte_for_byte, malformed_and_oversized_requests_get_400_and_431_and_the_router_keeps_serving, fails_open_within_a_second_when_the_router_stops_and_steers_again_after, a_killed_agent_leaves_pods_on_the_direct_path_at_once, sigterm_fails_open_and_exits_cleanly, config_reload_changes_routing_without_dropping_a_connection],
}

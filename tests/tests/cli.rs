//! The node CLI against a running agent on the netns node: every command's
//! JSON says what the data path does (`explain` predicts the endpoint that
//! then answers, `conns` shows the open connection, `/metrics` counts the
//! requests just sent by decision).

use std::{
    io::{Read, Write},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use laneway::admin::api;
use laneway_tests::{
    Standard,
    admin::{json, laneway, scrape, trace},
    agent::binary,
    client,
};

#[test]
fn status_shows_programs_maps_router_and_snapshot() -> Result<()> {
    let s = Standard::start()?;
    let st: api::Status = json(&s.node, &["status"])?;
    assert!(st.ready);
    assert_eq!(st.mode, "socket");
    let names: Vec<&str> = st.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "connect4",
            "connect6",
            "sock_ops",
            "getsockopt",
            "getpeername4",
            "getpeername6"
        ]
    );
    assert!(
        st.programs
            .iter()
            .all(|p| p.attached_to == s.node.cgroup().display().to_string())
    );
    assert!(st.router.alive, "heartbeat fresh: {:?}", st.router);
    assert_eq!(st.snapshot.services, 3);
    assert_eq!(st.snapshot.pods_enrolled, 2);
    let enrolled = st
        .maps
        .iter()
        .find(|m| m.name == "ENROLLED")
        .context("ENROLLED")?;
    assert_eq!(enrolled.entries, 2);
    let table = laneway(&s.node, &["status"])?;
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("connect4"));
    Ok(())
}

#[test]
fn pods_lists_enrolled_pods_and_the_ones_that_could_not_be() -> Result<()> {
    let s = Standard::start()?;
    let pods: api::Pods = json(&s.node, &["pods"])?;
    let names: Vec<(String, Option<String>)> = pods
        .enrolled
        .iter()
        .map(|p| (p.name.clone(), p.tag.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("client".into(), None),
            ("client-joint1".into(), Some("joint1".into()))
        ]
    );
    assert!(pods.enrolled.iter().all(|p| p.netns_cookie != 0));
    assert!(pods.unenrolled.is_empty());

    s.agent.rewrite_config(|text| {
        format!("{text}  - {{name: ghost, netns: /run/netns/laneway-no-such-ns}}\n")
    })?;
    let pods: api::Pods = json(&s.node, &["pods"])?;
    assert_eq!(pods.unenrolled.len(), 1, "{pods:?}");
    assert_eq!(pods.unenrolled[0].pod, "default/ghost");
    assert!(
        pods.unenrolled[0]
            .reason
            .contains("/run/netns/laneway-no-such-ns"),
        "{:?}",
        pods.unenrolled
    );
    Ok(())
}

#[test]
fn services_group_endpoints_by_lane() -> Result<()> {
    let s = Standard::start()?;
    let svcs: api::Services = json(&s.node, &["services", "reviews"])?;
    assert_eq!(svcs.services.len(), 1);
    let port = &svcs.services[0].ports[0];
    let lanes: Vec<Option<&str>> = port.lanes.iter().map(|l| l.tag.as_deref()).collect();
    assert_eq!(lanes, [None, Some("gray"), Some("joint1")]);
    let joint1 = &port.lanes[2].endpoints[0];
    assert_eq!(joint1.name.as_deref(), Some("reviews-joint1"));
    assert!(joint1.eligible);
    let missing = laneway(&s.node, &["services", "nope"])?;
    assert_eq!(
        missing.status.code(),
        Some(1),
        "unknown service is an error"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
    Ok(())
}

#[test]
fn explain_predicts_the_endpoint_that_then_answers() -> Result<()> {
    let s = Standard::start()?;
    for (from, headers, expected) in [
        (
            "default/client",
            vec!["-H", "x-mse-tag: joint1"],
            "reviews-joint1",
        ),
        ("client", vec!["-H", "x-mse-tag: joint2"], "reviews-base"),
        ("client-joint1", vec![], "reviews-joint1"),
    ] {
        let mut args = vec!["explain", "--from", from, "--to", "reviews"];
        args.extend(headers.iter().copied());
        let e: api::Explanation = json(&s.node, &args)?;
        let predicted = e.endpoint.clone().context("an endpoint")?;
        let pod = if from == "client-joint1" {
            s.pods.client_joint1
        } else {
            s.pods.client
        };
        let hdrs: Vec<(&str, &str)> = headers
            .chunks(2)
            .filter_map(|c| c[1].split_once(": "))
            .collect();
        let r = client::get(s.node.pod(pod), s.reviews(), &hdrs)?;
        assert_eq!(r.endpoint(), expected);
        let actual = r
            .header("x-laneway-route")
            .unwrap_or("")
            .rsplit("endpoint=")
            .next()
            .unwrap_or("")
            .to_owned();
        assert_eq!(predicted, actual, "explain {args:?}: {:#?}", e.steps);
        assert!(e.steps.len() >= 4, "{:?}", e.steps);
    }
    let bad = laneway(&s.node, &["explain", "--to", "reviews", "-H", "no-colon"])?;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a header without ':' is a usage error"
    );
    Ok(())
}

#[test]
fn conns_shows_an_open_connection() -> Result<()> {
    let s = Standard::start()?;
    let mut conn = client::Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    conn.get("/", &[("x-mse-tag", "gray")])?;
    let conns: api::Conns = json(&s.node, &["conns"])?;
    let c = conns
        .connections
        .iter()
        .find(|c| c.destination == s.reviews().to_string())
        .with_context(|| format!("{conns:?}"))?;
    assert_eq!(c.caller.as_deref(), Some("default/client"));
    assert_eq!(c.service.as_deref(), Some("default/reviews"));
    assert_eq!(c.tag.as_deref(), Some("gray"));
    assert_eq!(c.protocol, "http");
    assert_eq!(c.requests, 1);
    assert!(c.bytes_in > 0 && c.bytes_out > 0, "{c:?}");
    assert!(c.endpoint.as_deref().is_some_and(|e| e.ends_with(":8080")));
    drop(conn);
    std::thread::sleep(Duration::from_millis(200));
    let conns: api::Conns = json(&s.node, &["conns"])?;
    assert!(
        conns.connections.is_empty(),
        "closed connections leave the table: {conns:?}"
    );
    Ok(())
}

#[test]
fn metrics_count_the_requests_just_sent_by_decision() -> Result<()> {
    let s = Standard::start()?;
    let client = s.node.pod(s.pods.client);
    for _ in 0..3 {
        client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
    }
    for _ in 0..2 {
        client::get(client, s.reviews(), &[("x-mse-tag", "nolane")])?;
    }
    client::get(client, s.reviews(), &[])?;
    // The client has its answers; the router may still be closing its
    // side of the last connection (which the gauge below counts).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !json::<api::Conns>(&s.node, &["conns"])?
        .connections
        .is_empty()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "connections still open 5 s after the last answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = scrape(&s.node)?;
    let count = |decision: &str, tag: &str| {
        let needle = format!(
            "laneway_requests_total{{service=\"default/reviews\",tag=\"{tag}\",decision=\"{decision}\",status_class=\"2xx\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(count("tagged", "joint1"), Some(3), "{text}");
    // A tag no endpoint or policy of the service knows is labelled
    // `_other`: clients cannot mint series.
    assert_eq!(count("fallback", "_other"), Some(2), "{text}");
    assert!(!text.contains("nolane"), "{text}");
    assert_eq!(count("base", ""), Some(1), "{text}");
    assert!(
        text.contains("laneway_redirected_connections_total 6"),
        "{text}"
    );
    assert!(
        text.contains("laneway_endpoints{service=\"default/reviews\",state=\"serving\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("laneway_request_duration_seconds_count{service=\"default/reviews\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("laneway_snapshot_updates_total 1\n"),
        "{text}"
    );
    assert!(text.contains("laneway_fail_open_total 0\n"), "{text}");
    assert!(text.contains("laneway_active_connections 0\n"), "{text}");

    // Error counters are there at 0 for every service, before any error.
    for service in ["default/reviews", "default/ratings", "default/echo"] {
        for counter in ["policy_errors", "upstream_connect_errors"] {
            let line = format!("laneway_{counter}_total{{service=\"{service}\"}} 0\n");
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
    }

    // A connection held open counts.
    let held = client::Conn::open(client, s.reviews())?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(scrape(&s.node)?.contains("laneway_active_connections 1\n"));
    drop(held);

    // An L4 stream counts when it ends, with no status class.
    let mut stream = client::connect(client, s.echo())?;
    stream.write_all(b"not http\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed)?;
    assert_eq!(echoed, b"not http\n");
    let l4 = "laneway_requests_total{service=\"default/echo\",tag=\"\",decision=\"base\",status_class=\"none\"} 1\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut text = scrape(&s.node)?;
    while !text.contains(l4) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = scrape(&s.node)?;
    }
    assert!(text.contains(l4), "{text}");
    Ok(())
}

#[test]
fn status_and_config_check_count_endpoints_alike() -> Result<()> {
    let s = Standard::start()?;
    // One endpoint behind two ports: one endpoint, whatever the ports.
    s.agent.rewrite_config(|text| {
        text.replacen(
            "services:\n",
            "services:\n  - {name: two-ports, vips: [10.96.0.99], ports: [{port: 80}, {port: 81}], endpoints: [{ip: 10.244.0.99}]}\n",
            1,
        )
    })?;
    let check = Command::new(binary())
        .args(["config", "check"])
        .arg(&s.agent.config)
        .output()?;
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("4 services, 6 endpoints"), "{check}");
    let st: api::Status = json(&s.node, &["status"])?;
    assert_eq!(st.snapshot.endpoints, 6, "{:?}", st.snapshot);
    let table = laneway(&s.node, &["status"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("4 (6 VIP ports, 6 endpoints)"), "{table}");
    Ok(())
}

#[test]
fn trace_streams_decisions_as_they_happen() -> Result<()> {
    let s = Standard::start()?;
    let client = s.node.pod(s.pods.client);
    let events = trace(&s.node, &["--service", "reviews"], 2, || {
        client::get(client, s.ratings(), &[])?; // filtered out
        client::get(client, s.reviews(), &[("x-mse-tag", "gray")])?;
        client::get(client, s.reviews(), &[])?;
        Ok(())
    })?;
    assert_eq!(events[0].service, "default/reviews");
    assert_eq!(
        (events[0].tag.as_deref(), events[0].decision.as_deref()),
        (Some("gray"), Some("tagged"))
    );
    assert_eq!(
        (events[1].tag.as_deref(), events[1].decision.as_deref()),
        (None, Some("base"))
    );
    assert_eq!(events[0].caller.as_deref(), Some("default/client"));

    // --tag keeps only that lane's decisions, across services.
    let events = trace(&s.node, &["--tag", "joint1"], 2, || {
        client::get(client, s.reviews(), &[("x-mse-tag", "gray")])?; // filtered out
        client::get(client, s.reviews(), &[])?; // filtered out
        client::get(client, s.ratings(), &[("x-mse-tag", "joint1")])?;
        client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
        Ok(())
    })?;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.service.as_str(), e.tag.as_deref(), e.decision.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("default/ratings", Some("joint1"), Some("fallback")),
            ("default/reviews", Some("joint1"), Some("tagged"))
        ]
    );
    Ok(())
}

#[test]
fn maps_decode_the_kernel_maps() -> Result<()> {
    let s = Standard::start()?;
    let conn = client::Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let maps: api::Maps = json(&s.node, &["maps"])?;
    assert_eq!(maps.enrolled.len(), 2);
    assert!(
        maps.services
            .iter()
            .any(|e| e.vip == "10.96.0.10:80" && e.service.as_deref() == Some("default/reviews"))
    );
    assert!(maps.services.iter().any(|e| e.vip == "[fd00:96::10]:80"));
    assert_eq!(maps.router.port, 15001);
    assert!(
        maps.orig_by_conn
            .iter()
            .any(|c| c.destination == "10.96.0.10:80"),
        "{maps:?}"
    );
    assert!(maps.stats.redirected >= 1);
    drop(conn);
    Ok(())
}

#[test]
fn a_stopped_agent_gets_a_clear_message_and_exit_code_3() -> Result<()> {
    let mut s = Standard::start()?;
    s.agent.terminate()?;
    let out = laneway(&s.node, &["status"])?;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running"), "{err}");
    assert!(!err.contains("panicked"));
    Ok(())
}

#[test]
fn preflight_passes_on_this_machine() -> Result<()> {
    let out = Command::new(binary())
        .args(["preflight", "-o", "json"])
        .output()?;
    let doc: api::Preflight = serde_json::from_slice(&out.stdout)?;
    let failed: Vec<&api::Check> = doc.checks.iter().filter(|c| c.result == "fail").collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(out.status.success());
    assert!(
        doc.checks
            .iter()
            .any(|c| c.name.to_lowercase().contains("kernel"))
    );
    Ok(())
}

#[test]
fn health_readiness_and_the_config_in_force() -> Result<()> {
    let s = Standard::start()?;
    assert_eq!(s.node.admin_get("/healthz")?.0, 200);
    assert_eq!(
        s.node.admin_get("/readyz")?.0,
        200,
        "ready after the first snapshot"
    );
    // The config is on the admin socket only, not on the TCP port.
    assert_eq!(s.node.admin_get("/config")?.0, 404);
    let config: serde_json::Value = json(&s.node, &["config", "show"])?;
    assert_eq!(config["router"]["listen"], "0.0.0.0:15001");
    assert_eq!(config["services"][0]["name"], "reviews");

    // After a reload, `laneway config show` prints the config now in force.
    s.agent.rewrite_config(|text| {
        text.replace(
            "name: reviews-joint1, tag: joint1",
            "name: reviews-joint1, tag: joint2",
        )
    })?;
    let shown: serde_json::Value = json(&s.node, &["config", "show"])?;
    let tags: Vec<&str> = shown["services"][0]["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .filter_map(|e| e["tag"].as_str())
        .collect();
    assert_eq!(tags, ["joint2", "gray"], "{shown:#}");
    let yaml = laneway(&s.node, &["config", "show"])?;
    assert!(yaml.status.success());
    assert!(
        String::from_utf8_lossy(&yaml.stdout).contains("tag: joint2"),
        "the table form is YAML"
    );
    Ok(())
}

#[test]
fn a_caller_who_is_not_root_gets_a_clear_message_and_exit_code_4() -> Result<()> {
    let s = Standard::start()?;
    // nobody, with no groups: the 0600 admin socket refuses the connect.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary())
        .arg("status")
        .arg("--socket")
        .arg(s.node.admin_socket())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("root only"), "{err}");
    assert!(!err.contains("panicked"));
    Ok(())
}

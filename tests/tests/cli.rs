//! The node CLI against a running agent on the netns node: every command's
//! JSON says what the data path does (`explain` predicts the endpoint that
//! then answers, `conns` shows the open connection, `/metrics` counts the
//! requests just sent by decision).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use laneway::admin::api;
use laneway_tests::{Standard, agent::binary, client};
use serde::de::DeserializeOwned;

fn laneway(s: &Standard, args: &[&str]) -> Result<Output> {
    Command::new(binary())
        .args(args)
        .arg("--socket")
        .arg(s.node.admin_socket())
        .output()
        .context("run laneway")
}

fn json<T: DeserializeOwned>(s: &Standard, args: &[&str]) -> Result<T> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = laneway(s, &all)?;
    anyhow::ensure!(
        out.status.success(),
        "laneway {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn status_shows_programs_maps_router_and_snapshot() -> Result<()> {
    let s = Standard::start()?;
    let st: api::Status = json(&s, &["status"])?;
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
    let table = laneway(&s, &["status"])?;
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("connect4"));
    Ok(())
}

#[test]
fn pods_lists_enrolled_pods_and_the_ones_that_could_not_be() -> Result<()> {
    let s = Standard::start()?;
    let pods: api::Pods = json(&s, &["pods"])?;
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

    let text = std::fs::read_to_string(&s.agent.config)?;
    std::fs::write(
        &s.agent.config,
        format!("{text}  - {{name: ghost, netns: /run/netns/laneway-no-such-ns}}\n"),
    )?;
    s.agent
        .wait_for_log("config reloaded", Duration::from_secs(5))?;
    let pods: api::Pods = json(&s, &["pods"])?;
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
    let svcs: api::Services = json(&s, &["services", "reviews"])?;
    assert_eq!(svcs.services.len(), 1);
    let port = &svcs.services[0].ports[0];
    let lanes: Vec<Option<&str>> = port.lanes.iter().map(|l| l.tag.as_deref()).collect();
    assert_eq!(lanes, [None, Some("gray"), Some("joint1")]);
    let joint1 = &port.lanes[2].endpoints[0];
    assert_eq!(joint1.name.as_deref(), Some("reviews-joint1"));
    assert!(joint1.eligible);
    let missing = laneway(&s, &["services", "nope"])?;
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
        let e: api::Explanation = json(&s, &args)?;
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
    let bad = laneway(&s, &["explain", "--to", "reviews", "-H", "no-colon"])?;
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
    let conns: api::Conns = json(&s, &["conns"])?;
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
    let conns: api::Conns = json(&s, &["conns"])?;
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
    let text = s.node.scrape_metrics()?;
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
    Ok(())
}

#[test]
fn trace_streams_decisions_as_they_happen() -> Result<()> {
    let s = Standard::start()?;
    let mut child = Command::new(binary())
        .args([
            "trace",
            "--service",
            "reviews",
            "--count",
            "2",
            "-o",
            "json",
            "--socket",
        ])
        .arg(s.node.admin_socket())
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let client = s.node.pod(s.pods.client);
    client::get(client, s.ratings(), &[])?; // filtered out
    client::get(client, s.reviews(), &[("x-mse-tag", "gray")])?;
    client::get(client, s.reviews(), &[])?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let events: Vec<api::TraceEvent> = out
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l))
        .collect::<Result<_, _>>()?;
    assert!(child.wait()?.success());
    assert_eq!(events.len(), 2, "{events:?}");
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
    Ok(())
}

#[test]
fn maps_decode_the_kernel_maps() -> Result<()> {
    let s = Standard::start()?;
    let conn = client::Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let maps: api::Maps = json(&s, &["maps"])?;
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
    let out = laneway(&s, &["status"])?;
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

//! The agent where users run it, not where the harness usually does: outside
//! the cgroup its programs attach to, on a node whose pods are slow to
//! resolve, and fed a cluster state it cannot apply. Run as root through
//! `cargo xtask test`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use laneway_tests::{
    Agent, Node, Standard,
    admin::{json, scrape},
    client,
    kube::{reviews_cluster, service},
    standard,
};

/// `laneway_fail_open_total` from `/metrics`.
fn fail_open_total(node: &Node) -> Result<u64> {
    scrape(node)?
        .lines()
        .find_map(|l| l.strip_prefix("laneway_fail_open_total "))
        .context("no laneway_fail_open_total")?
        .trim()
        .parse()
        .context("laneway_fail_open_total is no number")
}

#[test]
fn an_agent_outside_its_cgroup_still_learns_each_connections_destination() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let agent = Agent::start_outside_cgroup(&node, &scenario)?;
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid()))?;
    let attached = node.cgroup().file_name().unwrap().to_string_lossy();
    assert!(
        !own.contains(attached.as_ref()),
        "the agent runs outside the cgroup its programs attach to: {own}"
    );

    let client = node.pod(pods.client);
    let reviews = Node::vip(&scenario.services[0]);
    let r = client::get(client, reviews, &[("x-mse-tag", "joint1")])?;
    assert!(r.routed(), "through the router: {r:?}\n{}", agent.log());
    assert_eq!(r.endpoint(), "reviews-joint1");
    // The caller is known by its netns cookie: its own tag is its lane.
    let r = client::get(node.pod(pods.client_joint1), reviews, &[])?;
    assert_eq!(r.endpoint(), "reviews-joint1", "lane inheritance");
    assert!(!agent.log().contains("destination is no service"));
    Ok(())
}

#[test]
fn a_slow_reconcile_never_delays_the_heartbeat() -> Result<()> {
    let s = Standard::start()?;
    let before = fail_open_total(&s.node)?;
    // A pod whose namespace blocks on open (a FIFO, as a hung filesystem
    // would), and three hundred more that each take a trip into a netns.
    let fifo = s.node.dir().join("slow-netns");
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string.
    anyhow::ensure!(
        unsafe { libc::mkfifo(path.as_ptr(), 0o600) } == 0,
        "mkfifo: {}",
        std::io::Error::last_os_error()
    );
    let mut extra = format!(
        "  - {{name: slow, namespace: busy, netns: {}}}\n",
        fifo.display()
    );
    for i in 0..300 {
        extra.push_str(&format!(
            "  - {{name: p{i}, namespace: busy, netns: /proc/self/ns/net}}\n"
        ));
    }
    let client = s.node.pod(s.pods.client);
    let started = Instant::now();
    let counts = client::under_load(client, s.reviews(), || {
        s.agent.rewrite_config(|text| format!("{text}{extra}"))?;
        // Keep the load on past the slow pod's timeout.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    })?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the reload waited for the slow namespace ({took:?})"
    );
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_eq!(
        counts.direct, 0,
        "every request went through the router while reconciling: {counts:?}"
    );
    assert!(counts.ok > 20, "{counts:?}");
    assert_eq!(fail_open_total(&s.node)?, before, "no connect failed open");

    let pods: laneway::admin::api::Pods = json(&s.node, &["pods"])?;
    let slow = pods
        .unenrolled
        .iter()
        .find(|u| u.pod == "busy/slow")
        .context("the slow pod is reported")?;
    assert!(slow.reason.contains("did not open within"), "{slow:?}");
    // Release the agent's thread still blocked on the FIFO (a writer that
    // does not wait for a reader).
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    Ok(())
}

#[test]
fn with_kube_a_state_that_cannot_be_applied_keeps_the_last_good_one_routing() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let svc = &scenario.services[0];
    let cluster = reviews_cluster(&node, &scenario, &pods, service(&node, svc, "backends").0)?;
    let mut agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let client = node.pod(pods.client);
    let reviews = Node::vip(svc);
    let r = client::get(client, reviews, &[("x-mse-tag", "joint1")])?;
    assert!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");

    // More VIP:ports than the services map holds (65,536): the apply fails.
    let ports: Vec<(String, i32, i32)> = (1..=32_769).map(|p| (format!("p{p}"), p, p)).collect();
    let ports: Vec<(&str, i32, i32)> = ports.iter().map(|(n, p, t)| (n.as_str(), *p, *t)).collect();
    for (name, vip) in [("huge-a", "10.96.200.1"), ("huge-b", "10.96.200.2")] {
        cluster.api.apply(laneway_kube_fake::objects::service(
            "backends", name, vip, &ports,
        ));
    }
    agent.wait_for_log("applying the new state failed", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.is_running()?, "the agent goes on:\n{}", agent.log());
    let r = client::get(client, reviews, &[("x-mse-tag", "joint1")])?;
    assert!(
        r.routed() && r.endpoint() == "reviews-joint1",
        "the last good state routes: {r:?}"
    );

    // Once the cluster shrinks again, the state applies.
    for name in ["huge-a", "huge-b"] {
        cluster
            .api
            .delete::<k8s_openapi::api::core::v1::Service>(Some("backends"), name);
    }
    agent.wait_for_log(
        "the state that failed to apply or reached not every pod is applied now",
        Duration::from_secs(30),
    )?;
    let status = agent.terminate()?;
    assert!(status.success(), "a clean stop: {status}\n{}", agent.log());
    assert!(
        agent
            .log()
            .contains("shutting down: clearing the heartbeat"),
        "the heartbeat is cleared and the router drains:\n{}",
        agent.log()
    );
    Ok(())
}

//! A DaemonSet rollout on one node, in the kubelet's real order, with the
//! agent in `--kube` mode against the API stand-in: the surge agent starts
//! beside the old one and takes the node over, the old one drains and stands
//! by, gets SIGTERM, and an old container restarted mid-rollout never takes
//! the node back; then crash loops of either, and a reboot mid-rollout.
//! Run as root through `cargo xtask test`.

use std::time::Duration;

use anyhow::{Result, ensure};
use laneway_tests::{
    Agent, Node, Scenario,
    client::{self, LoadCounts},
    kube::{Cluster, reviews_cluster, service},
    standard,
};

/// How the DaemonSet starts an agent of pod-template-generation `g`.
fn daemonset_args(generation: &'static str) -> [&'static str; 4] {
    ["--generation", generation, "--after-handover", "wait"]
}

/// The API with two enrolled clients (base and joint1) and the reviews
/// service's endpoints.
fn cluster(node: &Node, scenario: &Scenario, pods: &standard::Pods) -> Result<Cluster> {
    let svc = &scenario.services[0];
    let mut cluster = reviews_cluster(node, scenario, pods, service(node, svc, "backends").0)?;
    cluster.run_local_pod(node, pods.client_joint1, "shop", Some("joint1"))?;
    Ok(cluster)
}

/// Every request answered by its own lane: the base client's untagged ones
/// by the base endpoint, the joint1 client's by the joint1 endpoint.
fn check_lanes(base: &LoadCounts, joint1: &LoadCounts) -> Result<()> {
    ensure!(
        base.by_endpoint.keys().all(|e| e == "reviews-base"),
        "base client answered by another lane: {base:?}"
    );
    ensure!(
        joint1.by_endpoint.keys().all(|e| e == "reviews-joint1"),
        "joint1 client answered by another lane: {joint1:?}"
    );
    Ok(())
}

#[test]
fn a_surge_rollout_hands_the_node_over_and_drops_no_request() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let cluster = cluster(&node, &scenario, &pods)?;
    let reviews = Node::vip(&scenario.services[0]);
    let mut old = Agent::start_kube_as(&node, &scenario, &cluster, &daemonset_args("1"), None)?;
    let mut new = None;
    let mut joint1 = LoadCounts::default();
    let base = client::under_load(node.pod(pods.client), reviews, || {
        joint1 = client::under_load(node.pod(pods.client_joint1), reviews, || {
            // The surge pod starts and becomes Ready: it owns the node.
            let surge =
                Agent::start_kube_as(&node, &scenario, &cluster, &daemonset_args("2"), None)?;
            old.wait_for_log("standing by", Duration::from_secs(30))?;
            // The rollout deletes the old pod: SIGTERM.
            let status = old.terminate()?;
            ensure!(status.success(), "old agent: {status}\n{}", old.log());
            ensure!(
                !old.log().contains("clearing the heartbeat"),
                "a taken-over agent leaves the heartbeat to its successor:\n{}",
                old.log()
            );
            // An old pod's container restarted mid-rollout stands by.
            let mut restarted = Agent::start_kube_as(
                &node,
                &scenario,
                &cluster,
                &daemonset_args("1"),
                Some("standing by"),
            )?;
            std::thread::sleep(Duration::from_secs(1));
            ensure!(
                !restarted.log().contains("took over"),
                "an older agent never takes the node back:\n{}",
                restarted.log()
            );
            ensure!(restarted.terminate()?.success());
            ensure!(
                !surge.log().contains("handing over"),
                "the new agent kept the node:\n{}",
                surge.log()
            );
            new = Some(surge);
            Ok(())
        })?;
        Ok(())
    })?;
    eprintln!("base client: {base:?}\njoint1 client: {joint1:?}");
    ensure!(base.failed == 0 && joint1.failed == 0, "no request failed");
    ensure!(
        base.direct == 0 && joint1.direct == 0,
        "every request went through a router"
    );
    ensure!(base.ok > 20 && joint1.ok > 20, "load ran throughout");
    check_lanes(&base, &joint1)?;
    drop(new);
    Ok(())
}

#[test]
fn crash_loops_and_a_reboot_mid_rollout_leave_the_newest_agent_owning_the_node() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let cluster = cluster(&node, &scenario, &pods)?;
    let reviews = Node::vip(&scenario.services[0]);
    let start = |generation, logged| {
        Agent::start_kube_as(
            &node,
            &scenario,
            &cluster,
            &daemonset_args(generation),
            logged,
        )
    };
    let ask = |p| client::get(node.pod(p), reviews, &[]);

    let mut new = start("2", None)?;
    let mut old = start("1", Some("standing by"))?;
    // The new agent crashes: the standing-by one takes the node back.
    new.kill();
    old.wait_for_log("the owner is gone", Duration::from_secs(10))?;
    old.wait_for_log("laneway agent ready", Duration::from_secs(10))?;
    let r = ask(pods.client_joint1)?;
    ensure!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");
    // Restarted, it takes the node over again; the old one stands by.
    let new = start("2", None)?;
    old.wait_for_log("standing by", Duration::from_secs(30))?;
    // The standing-by agent crashes and restarts: it stands by again.
    old.kill();
    let old = start("1", Some("standing by"))?;
    let r = ask(pods.client)?;
    ensure!(r.routed() && r.endpoint() == "reviews-base", "{r:?}");

    // A reboot mid-rollout: every process and pin gone, the old pod's
    // agent first, then the new one, which takes over.
    drop((new, old));
    node.remove_pins();
    let mut old = start("1", None)?;
    let new = start("2", None)?;
    old.wait_for_log("standing by", Duration::from_secs(30))?;
    let r = ask(pods.client_joint1)?;
    ensure!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");
    ensure!(old.terminate()?.success());
    let r = ask(pods.client_joint1)?;
    ensure!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");
    drop(new);
    Ok(())
}

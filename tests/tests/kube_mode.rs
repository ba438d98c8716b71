//! The agent driven by the Kubernetes API (`--kube`), end to end on the netns
//! node: a list/watch API stand-in on the node's loopback, pods with
//! processes in kubelet-style cgroups, real programs, real HTTP.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use laneway::admin::api;
use laneway_tests::{
    Agent, Node, Scenario, ServiceSpec,
    admin::{json, scrape},
    backend::Backend,
    client::{self, eventually},
    kube::{Cluster, namespace, pod, reviews_cluster, service},
    standard,
};

#[test]
fn labelling_a_namespace_steers_its_pods_and_unlabelling_sends_them_direct_again() -> Result<()> {
    let mut node = Node::new()?;
    let (scenario, pods) = standard::scenario(&mut node)?;
    let mut backends = Vec::new();
    for p in [pods.base, pods.joint1, pods.gray, pods.ratings] {
        backends.push(Backend::http(node.pod(p), 8080)?);
    }
    node.install_kube_proxy(&scenario)?;
    let mut cluster = Cluster::start(&node)?;
    cluster.api.apply(namespace("shop", false));
    cluster.api.apply(namespace("backends", false));
    cluster.run_local_pod(&node, pods.client, "shop", None)?;
    cluster.run_local_pod(&node, pods.client_joint1, "shop", Some("joint1"))?;
    for svc in &scenario.services[..2] {
        for (index, tag) in &svc.endpoints {
            cluster
                .api
                .apply(pod(&node, *index, "backends", "node-2", tag.as_deref()));
        }
        let (s, slice) = service(&node, svc, "backends");
        cluster.api.apply(s);
        cluster.api.apply(slice);
    }
    let agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let reviews = Node::vip(&scenario.services[0]);
    let client = node.pod(pods.client);
    let ask = |tag: &'static str| move || client::get(client, reviews, &[("x-mse-tag", tag)]);

    let r = ask("joint1")()?;
    assert!(!r.routed(), "namespace not enrolled yet: the direct way");

    cluster.api.apply(namespace("shop", true));
    let r = eventually("joint1 steered", ask("joint1"), |r| {
        r.routed() && r.endpoint() == "reviews-joint1"
    })?;
    assert_eq!(r.header("x-seen-tag"), Some("joint1"));
    let r = eventually("gray steered", ask("gray"), client::Response::routed)?;
    assert_eq!(r.endpoint(), "reviews-gray");
    let caller = node.pod(pods.client_joint1);
    let r = client::get(caller, reviews, &[])?;
    assert_eq!(
        r.endpoint(),
        "reviews-joint1",
        "the pod's tag label is its lane"
    );

    // Retag the gray endpoint's pod: the lane moves with the label.
    cluster
        .api
        .apply(pod(&node, pods.gray, "backends", "node-2", Some("joint2")));
    eventually("retagged endpoint", ask("joint2"), |r| {
        r.endpoint() == "reviews-gray"
    })?;
    eventually("old lane falls back", ask("gray"), |r| {
        r.endpoint() == "reviews-base"
    })?;

    cluster.api.apply(namespace("shop", false));
    eventually("direct again", ask("joint1"), |r| !r.routed())?;
    drop(agent);
    Ok(())
}

#[test]
fn the_agent_is_ready_only_after_the_first_sync_and_keeps_routing_through_an_api_outage()
-> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let svc = &scenario.services[0];
    let cluster = reviews_cluster(&node, &scenario, &pods, service(&node, svc, "backends").0)?;

    // Down before the agent starts: it must not say ready.
    cluster.api.set_down(true);
    let started = std::thread::spawn({
        let node_dir = node.dir().to_owned();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            node_dir.join("ready").exists()
        }
    });
    let api = &cluster.api;
    let bring_back = std::thread::scope(|s| {
        let h = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(2000));
            api.set_down(false);
        });
        let agent = Agent::start_kube(&node, &scenario, &cluster);
        let _ = h.join();
        agent
    });
    assert!(
        !started.join().expect("probe"),
        "ready file written while the API was down"
    );
    let agent = bring_back?;

    let reviews = Node::vip(svc);
    let client = node.pod(pods.client);
    let r = client::get(client, reviews, &[("x-mse-tag", "joint1")])?;
    assert!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");

    // An outage after the first sync: the last good state keeps routing.
    cluster.api.set_down(true);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let r = client::get(client, reviews, &[("x-mse-tag", "joint1")])?;
        assert!(r.routed() && r.endpoint() == "reviews-joint1");
    }
    cluster.api.set_down(false);
    drop(agent);
    Ok(())
}

#[test]
fn tc_mode_finds_each_pods_veth_from_the_api_and_steers() -> Result<()> {
    let mut node = Node::new()?;
    let (mut scenario, pods) = standard::scenario(&mut node)?;
    scenario.router_extra = "  mode: tc\n".into();
    let _base = Backend::http(node.pod(pods.base), 8080)?;
    let _joint1 = Backend::http(node.pod(pods.joint1), 8080)?;
    node.install_kube_proxy(&scenario)?;
    let mut cluster = Cluster::start(&node)?;
    cluster.api.apply(namespace("shop", true));
    cluster.run_local_pod(&node, pods.client, "shop", None)?;
    let svc = &scenario.services[0];
    for (index, tag) in &svc.endpoints {
        cluster
            .api
            .apply(pod(&node, *index, "backends", "node-2", tag.as_deref()));
    }
    let (s, slice) = service(&node, svc, "backends");
    cluster.api.apply(s);
    cluster.api.apply(slice);
    let agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let client = node.pod(pods.client);
    let r = eventually(
        "steered through TC",
        || client::get(client, Node::vip(svc), &[("x-mse-tag", "joint1")]),
        |r| r.routed() && r.endpoint() == "reviews-joint1",
    )?;
    assert_eq!(r.header("x-seen-tag"), Some("joint1"));
    drop(agent);
    Ok(())
}

/// The reviews Service (in namespace `backends`) annotated
/// `laneway.io/canary: CANARY`.
fn reviews_with_canary(node: &Node, svc: &ServiceSpec, canary: &str) -> Service {
    let (mut s, _) = service(node, svc, "backends");
    s.metadata.annotations = Some(BTreeMap::from([(
        "laneway.io/canary".to_string(),
        canary.to_string(),
    )]));
    s
}

/// The API with the enrolled client (namespace `shop`) and the reviews
/// Service with its endpoints, annotated `laneway.io/canary: CANARY`.
fn canary_cluster(
    node: &Node,
    scenario: &Scenario,
    pods: &standard::Pods,
    canary: &str,
) -> Result<Cluster> {
    let reviews = reviews_with_canary(node, &scenario.services[0], canary);
    reviews_cluster(node, scenario, pods, reviews)
}

/// `laneway_policy_errors_total` of `service` on /metrics (0 when absent).
fn policy_errors(node: &Node, service: &str) -> Result<u64> {
    let needle = format!("laneway_policy_errors_total{{service=\"{service}\"}} ");
    let text = scrape(node)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0))
}

/// The service as `laneway services -o json` shows it.
fn service_info(node: &Node, name: &str) -> Result<api::ServiceInfo> {
    let services: api::Services = json(node, &["services", name])?;
    services
        .services
        .into_iter()
        .next()
        .with_context(|| format!("no service {name}"))
}

#[test]
fn a_bad_policy_annotation_keeps_the_last_good_policy_in_force_and_says_so() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    // All untagged traffic to gray: a policy whose loss shows in every request.
    let cluster = canary_cluster(&node, &scenario, &pods, "gray=100")?;
    let mut agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let svc = &scenario.services[0];
    let reviews = Node::vip(svc);
    let client = node.pod(pods.client);
    let untagged = || client::get(client, reviews, &[]);
    eventually("the canary policy routes", untagged, |r| {
        r.routed() && r.endpoint() == "reviews-gray"
    })?;
    assert_eq!(policy_errors(&node, "backends/reviews")?, 0);
    assert_eq!(service_info(&node, "reviews")?.policy_error, None);

    cluster
        .api
        .apply(reviews_with_canary(&node, svc, "gray=200"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = service_info(&node, "reviews")?;
        if info.policy_error.is_some() || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = info
        .policy_error
        .as_deref()
        .context("the policy error is shown")?;
    assert!(error.contains("laneway.io/canary"), "{error}");
    assert!(
        info.policy.contains("gray=100"),
        "the last good policy is in force: {}",
        info.policy
    );
    assert!(policy_errors(&node, "backends/reviews")? >= 1);
    for _ in 0..20 {
        let r = untagged()?;
        assert!(
            r.routed() && r.endpoint() == "reviews-gray",
            "routing keeps the last good policy: {r:?}"
        );
    }
    let e: api::Explanation = json(
        &node,
        &["explain", "--from", "shop/client", "--to", "reviews"],
    )?;
    let gray = format!("{}:8080", node.pod(pods.gray).ip);
    assert_eq!(e.endpoint.as_deref(), Some(gray.as_str()), "{e:#?}");
    assert!(
        e.steps
            .iter()
            .any(|s| s.contains("policy annotations are bad")
                && s.contains("last good policy is in force")),
        "{:#?}",
        e.steps
    );

    // The last good policy lives in the agent's memory only: a restarted
    // agent has none for this service, so the cluster defaults (no canary,
    // the default slow start) apply until the annotation is fixed.
    agent.terminate()?;
    let agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let info = service_info(&node, "reviews")?;
    assert!(info.policy_error.is_some(), "{info:?}");
    assert_eq!(info.policy, "warmup 30s");
    eventually("base after a restart", untagged, |r| {
        r.routed() && r.endpoint() == "reviews-base"
    })?;
    drop(agent);
    Ok(())
}

#[test]
fn changing_the_canary_annotation_under_load_drops_no_request() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let cluster = canary_cluster(&node, &scenario, &pods, "gray=0")?;
    let agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let svc = &scenario.services[0];
    let reviews = Node::vip(svc);
    let client = node.pod(pods.client);
    eventually(
        "routed",
        || client::get(client, reviews, &[]),
        client::Response::routed,
    )?;
    let load = client::under_load(client, reviews, || {
        for share in ["50", "100", "0", "25"] {
            std::thread::sleep(Duration::from_millis(400));
            let canary = format!("gray={share}");
            cluster.api.apply(reviews_with_canary(&node, svc, &canary));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !service_info(&node, "reviews")?.policy.contains(&canary) {
                anyhow::ensure!(Instant::now() < deadline, "{canary} not in force");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_millis(400));
        Ok(())
    })?;
    // Every answer came through the router.
    let (ok, failed) = (load.ok - load.direct, load.failed + load.direct);
    let gray = load.by_endpoint.get("reviews-gray").copied().unwrap_or(0);
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 200, "load ran: {ok} requests");
    assert!(gray > 0, "the new shares took effect: {gray} on gray");
    drop(agent);
    Ok(())
}

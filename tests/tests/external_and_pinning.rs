//! Beyond lanes, end to end on the netns node: a lane of a service served
//! from outside the cluster (a "laptop" host reached through the node, as
//! over a VPN), health-checked as it comes and goes; and requests pinned to
//! one endpoint with `x-laneway-endpoint`. From the static file (socket and
//! TC mode) and from the Kubernetes API (`--kube`), with bad annotations
//! rejected and the last good policy kept.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use laneway::admin::api;
use laneway_tests::{
    Agent, Node, Standard,
    admin::{json, laneway, scrape, trace},
    backend::Backend,
    client::{self, Response, eventually},
    grpc::{self, EchoRequest, GrpcStandard, tagged},
    in_modes,
    kube::{reviews_cluster, service},
    standard::{self, Mode},
};
use tonic::Code;

/// The laptop's address (outside the pod network, routed by the node).
const LAPTOP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 5);
/// `reviews`' lane dev-alice is served by the laptop.
const EXTERNAL: &str = "dev-alice=10.8.0.5:8080";
const DEV: [(&str, &str); 1] = [("x-mse-tag", "dev-alice")];

/// The 503 of a lane whose laptop is down names service, lane and address.
fn is_external_down(r: &Response) -> bool {
    let body = r.text();
    r.status == 503
        && body.contains("default/reviews")
        && body.contains("lane dev-alice")
        && body.contains("10.8.0.5:8080")
}

/// `reviews`' endpoint at `address` as `laneway services -o json` shows it.
fn endpoint_info(node: &Node, address: &str) -> Result<api::EndpointInfo> {
    let services: api::Services = json(node, &["services", "reviews"])?;
    services
        .services
        .iter()
        .flat_map(|s| &s.ports)
        .flat_map(|p| &p.lanes)
        .flat_map(|l| &l.endpoints)
        .find(|e| e.address == address)
        .cloned()
        .with_context(|| format!("no endpoint {address} in {services:?}"))
}

fn the_laptop_serves_its_lane_while_it_answers(mode: Mode) -> Result<()> {
    let mut s = Standard::start_with(|sc| {
        mode.apply(sc);
        sc.services[0].policy = Some(format!("{{external_lanes: '{EXTERNAL}'}}"));
    })?;
    let laptop = s.node.add_outside_host("laptop", LAPTOP)?;
    let client = s.node.pod(s.pods.client);
    let reviews = s.reviews();
    let dev = || client::get(client, reviews, &DEV);

    // Nothing answers on the laptop yet: strict, 503 naming the address.
    let r = dev()?;
    assert!(is_external_down(&r), "{r:?}: {}", r.text());
    assert!(
        r.header("x-laneway-route")
            .is_some_and(|h| h.starts_with("decision=strict-reject")),
        "{r:?}"
    );

    let up = Backend::http(s.node.pod(laptop), 8080)?;
    let r = eventually("the laptop serves dev-alice", dev, |r| {
        r.endpoint() == "laptop"
    })?;
    assert_eq!(r.header("x-seen-tag"), Some("dev-alice"));
    // The router dials from the calling pod's namespace: the laptop sees
    // the pod's own address, as in-cluster endpoints do.
    assert_eq!(r.header("x-peer"), Some(client.ip.to_string().as_str()));
    // Everything else stays in the cluster.
    for (headers, want) in [
        (&[][..], "reviews-base"),
        (&[("x-mse-tag", "joint1")][..], "reviews-joint1"),
    ] {
        for _ in 0..10 {
            assert_eq!(client::get(client, reviews, headers)?.endpoint(), want);
        }
    }
    let info = endpoint_info(&s.node, "10.8.0.5:8080")?;
    assert!(info.external && info.eligible, "{info:?}");
    let events = trace(&s.node, &["--tag", "dev-alice"], 1, || dev().map(drop))?;
    assert_eq!(
        (events[0].endpoint.as_deref(), events[0].external),
        (Some("10.8.0.5:8080"), true),
        "{events:?}"
    );
    let explained: api::Explanation = json(
        &s.node,
        &[
            "explain",
            "--from",
            "client",
            "--to",
            "reviews",
            "-H",
            "x-mse-tag: dev-alice",
        ],
    )?;
    assert_eq!(explained.endpoint.as_deref(), Some("10.8.0.5:8080"));
    assert!(
        explained
            .steps
            .iter()
            .any(|s| s.contains("outside the cluster")),
        "{explained:?}"
    );
    let table = String::from_utf8(laneway(&s.node, &["services", "reviews"])?.stdout)?;
    assert!(
        table.lines().any(|l| l.contains("dev-alice")
            && l.contains("10.8.0.5:8080")
            && l.contains("external")),
        "{table}"
    );
    let metrics = scrape(&s.node)?;
    assert!(
        metrics.contains("laneway_endpoints{service=\"default/reviews\",state=\"external\"} 1\n"),
        "{metrics}"
    );

    // The laptop goes away: the request that finds it gone (its connect
    // refused) gets 502 naming the address, and every request after it the
    // lane's 503 at once, without waiting for a probe (one runs every 2 s:
    // it may also be the one that notices first).
    drop(up);
    let r = dev()?;
    assert!(
        is_external_down(&r) || (r.status == 502 && r.text().contains("10.8.0.5:8080")),
        "{r:?}: {}",
        r.text()
    );
    for _ in 0..5 {
        let r = dev()?;
        assert!(is_external_down(&r), "{r:?}: {}", r.text());
    }
    assert!(!endpoint_info(&s.node, "10.8.0.5:8080")?.eligible);
    assert!(
        laneway(&s.node, &["services", "reviews"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("external-down"))?,
    );

    // And comes back.
    let _up = Backend::http(s.node.pod(laptop), 8080)?;
    eventually("the laptop serves again", dev, |r| r.endpoint() == "laptop")?;
    Ok(())
}

fn a_pinned_request_reaches_exactly_the_named_pod(mode: Mode) -> Result<()> {
    let s = Standard::start_with(|sc| {
        mode.apply(sc);
        sc.services[0].policy = Some("{endpoint_pinning: true}".into());
    })?;
    let client = s.node.pod(s.pods.client);
    let pin = |value: &str, tag: Option<&str>| {
        let mut headers = vec![("x-laneway-endpoint", value)];
        headers.extend(tag.map(|t| ("x-mse-tag", t)));
        client::get(client, s.reviews(), &headers)
    };
    let joint1_ip = s.node.pod(s.pods.joint1).ip.to_string();
    for _ in 0..10 {
        // By pod name, untagged: the gray pod, not base.
        let r = pin("reviews-gray", None)?;
        assert_eq!(r.endpoint(), "reviews-gray", "{r:?}");
        assert!(
            r.header("x-laneway-route")
                .is_some_and(|h| h.starts_with("decision=pinned")),
            "{r:?}"
        );
        let seen = r.header("x-seen-headers").unwrap_or_default();
        assert!(!seen.contains("x-laneway-endpoint"), "forwarded: {seen}");
        // By IP, in lane gray: the pin overrides the lane, the lane travels on.
        let r = pin(&joint1_ip, Some("gray"))?;
        assert_eq!(r.endpoint(), "reviews-joint1", "{r:?}");
        assert_eq!(r.header("x-seen-tag"), Some("gray"));
    }
    // An endpoint the service does not have: 503 naming it, no fallback.
    let r = pin("reviews-nope", None)?;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.text().contains("default/reviews") && r.text().contains("reviews-nope"),
        "{}",
        r.text()
    );
    // ratings does not allow pinning: ignored, and not forwarded either.
    let r = client::get(
        client,
        s.ratings(),
        &[("x-laneway-endpoint", "reviews-gray")],
    )?;
    assert_eq!(r.endpoint(), "ratings-base");
    let seen = r.header("x-seen-headers").unwrap_or_default();
    assert!(!seen.contains("x-laneway-endpoint"), "forwarded: {seen}");

    let events = trace(&s.node, &["--service", "reviews"], 1, || {
        pin("reviews-gray", None).map(drop)
    })?;
    assert_eq!(events[0].decision.as_deref(), Some("pinned"), "{events:?}");
    s.agent
        .wait_for_log("pinned request", Duration::from_secs(5))?;
    let log = s.agent.log();
    assert!(
        log.lines().any(|l| l.contains("pinned request")
            && l.contains("default/client")
            && l.contains(&format!("{}:8080", s.node.pod(s.pods.gray).ip))),
        "{log}"
    );
    let metrics = scrape(&s.node)?;
    let pinned: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("laneway_requests_total{service=\"default/reviews\"")
                && l.contains("decision=\"pinned\"")
                && l.contains("status_class=\"2xx\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(pinned, 21, "{metrics}");
    Ok(())
}

fn a_pinned_grpc_call_reaches_the_named_pod_and_an_unknown_one_is_unavailable(
    mode: Mode,
) -> Result<()> {
    let g = GrpcStandard::start(mode, |svc| {
        svc.policy = Some("{endpoint_pinning: true}".into());
    })?;
    let pinned = |to: &str| {
        let mut request = tagged(EchoRequest::default(), Some("joint1"));
        let value = to.parse().expect("a valid metadata value");
        request.metadata_mut().insert("x-laneway-endpoint", value);
        request
    };
    grpc::runtime()?.block_on(async {
        let mut client = g.client(g.standard.pods.client)?;
        for _ in 0..10 {
            let reply = client.unary(pinned("reviews-gray")).await?.into_inner();
            assert_eq!(
                (
                    reply.endpoint.as_str(),
                    reply.seen_tag.as_str(),
                    reply.routed()
                ),
                ("reviews-gray", "joint1", true),
                "{reply:?}"
            );
        }
        let status = client
            .unary(pinned("reviews-nope"))
            .await
            .expect_err("a pin to an unknown endpoint answered");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("default/reviews-grpc")
                && status.message().contains("reviews-nope"),
            "{}",
            status.message()
        );
        Ok(())
    })
}

#[test]
fn a_grpc_call_in_an_external_lane_whose_laptop_is_down_is_unavailable_naming_it() -> Result<()> {
    let g = GrpcStandard::start(Mode::Socket, |svc| {
        svc.policy = Some("{external_lanes: 'dev-alice=10.8.0.5:50051'}".into());
    })?;
    grpc::runtime()?.block_on(async {
        let mut client = g.client(g.standard.pods.client)?;
        let status = client
            .unary(tagged(EchoRequest::default(), Some("dev-alice")))
            .await
            .expect_err("a lane whose laptop is down answered");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("default/reviews-grpc")
                && message.contains("lane dev-alice")
                && message.contains("10.8.0.5:50051"),
            "{message}"
        );
        // Other lanes are served on the same connection.
        let reply = client.unary(tagged(EchoRequest::default(), None)).await?;
        assert_eq!(reply.into_inner().endpoint, "reviews-base");
        Ok(())
    })
}

in_modes! {
    [socket => Socket, tc => Tc]: [
        the_laptop_serves_its_lane_while_it_answers,
        a_pinned_request_reaches_exactly_the_named_pod,
        a_pinned_grpc_call_reaches_the_named_pod_and_an_unknown_one_is_unavailable,
    ]
}

/// The reviews Service (namespace `backends`) with `annotations`.
fn annotated_reviews(
    node: &Node,
    scenario: &laneway_tests::Scenario,
    annotations: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Service {
    let (mut svc, _) = service(node, &scenario.services[0], "backends");
    svc.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    svc
}

/// The reviews service's policy error, once the agent shows one.
fn policy_error_shown(node: &Node) -> Result<api::ServiceInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let services: api::Services = json(node, &["services", "reviews"])?;
        let info = services.services.into_iter().next().context("no reviews")?;
        if info.policy_error.is_some() || Instant::now() > deadline {
            return Ok(info);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kube_annotations_serve_an_external_lane_and_pin_and_bad_ones_keep_the_last_good_policy()
-> Result<()> {
    let (mut node, scenario, pods, _backends) = standard::prepare()?;
    let laptop = node.add_outside_host("laptop", LAPTOP)?;
    let _up = Backend::http(node.pod(laptop), 8080)?;
    let good = [
        ("laneway.io/external-lanes", EXTERNAL),
        ("laneway.io/endpoint-pinning", "true"),
    ];
    let cluster = reviews_cluster(
        &node,
        &scenario,
        &pods,
        annotated_reviews(&node, &scenario, &good),
    )?;
    let _agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let client = node.pod(pods.client);
    let reviews = Node::vip(&scenario.services[0]);
    let dev = || client::get(client, reviews, &DEV);
    eventually("the laptop serves dev-alice", dev, |r| {
        r.endpoint() == "laptop"
    })?;
    let pinned = || client::get(client, reviews, &[("x-laneway-endpoint", "reviews-gray")]);
    eventually("a pin by pod name", pinned, |r| {
        r.endpoint() == "reviews-gray"
    })?;

    for (annotation, bad, says) in [
        (
            "laneway.io/external-lanes",
            "dev-alice=10.8.0.5",
            "\"10.8.0.5\" is not IP:PORT",
        ),
        ("laneway.io/endpoint-pinning", "yes", "\"yes\""),
    ] {
        let mut annotations = good.to_vec();
        annotations.retain(|(k, _)| *k != annotation);
        annotations.push((annotation, bad));
        cluster
            .api
            .apply(annotated_reviews(&node, &scenario, &annotations));
        let info = policy_error_shown(&node)?;
        let error = info.policy_error.as_deref().context("the error is shown")?;
        assert!(
            error.contains(annotation) && error.contains(says),
            "{error}"
        );
        assert!(
            info.policy.contains("external dev-alice=10.8.0.5:8080")
                && info.policy.contains("pinning allowed"),
            "the last good policy is in force: {}",
            info.policy
        );
        // And routes.
        assert_eq!(dev()?.endpoint(), "laptop");
        assert_eq!(pinned()?.endpoint(), "reviews-gray");
        // Fixed again before the next bad one.
        cluster
            .api
            .apply(annotated_reviews(&node, &scenario, &good));
        let deadline = Instant::now() + Duration::from_secs(10);
        while policy_error_shown_now(&node)? {
            anyhow::ensure!(Instant::now() < deadline, "the fix is not taken");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Whether the reviews service shows a policy error now.
fn policy_error_shown_now(node: &Node) -> Result<bool> {
    let services: api::Services = json(node, &["services", "reviews"])?;
    Ok(services
        .services
        .first()
        .is_some_and(|s| s.policy_error.is_some()))
}

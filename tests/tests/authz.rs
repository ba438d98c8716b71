//! Caller authorization by kernel-verified identity (`allow-from`), end to
//! end on the netns node: the standard scenario's `client` lives in
//! namespace `shop`, `client-joint1` in `default` (lane joint1). A denied
//! HTTP request gets 403 naming caller, service and rule, a denied gRPC call
//! `PERMISSION_DENIED`, a denied L4 connection a reset; a header claiming
//! another identity changes nothing. In socket and TC mode, with the
//! static file and with `--kube`.
//!
//! Run as root through `cargo xtask test authz`.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use laneway::admin::api;
use laneway_tests::{
    Agent, Node, Standard,
    admin::{json, scrape, trace},
    client::{self, Response},
    grpc::{self, EchoRequest, GrpcStandard, tagged},
    in_modes,
    kube::{Cluster, namespace, pod, service},
    standard::{self, Mode},
};
use tonic::Code;

/// The rule on the guarded services: callers in namespace `shop` only.
const SHOP_ONLY: &str = "{allow_from: 'namespaces=shop'}";

/// The standard node in `mode` with `client` in namespace `shop`, and
/// `reviews` (HTTP) and `echo` (declared `protocol: tcp`, which the kernel
/// would otherwise route itself) allowing `shop` only.
fn guarded(mode: Mode) -> Result<Standard> {
    Standard::start_with(|sc| {
        mode.apply(sc);
        let client = sc.enrolled[0].0;
        sc.namespaces = vec![(client, "shop".into())];
        sc.services[0].policy = Some(SHOP_ONLY.into());
        sc.services[2].protocol = "tcp";
        sc.services[2].policy = Some(SHOP_ONLY.into());
    })
}

/// `laneway_denied_total` of `service` on /metrics (0 when absent).
fn denied(node: &Node, service: &str) -> Result<u64> {
    let needle = format!("laneway_denied_total{{service=\"{service}\"}} ");
    Ok(scrape(node)?
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0))
}

/// Checks that `r` is the router's 403 for `caller` on `service` under
/// rule `rule`.
fn assert_denied(r: &Response, caller: &str, service: &str, rule: &str) {
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.header("x-laneway-route"),
        Some(format!("decision=denied; service={service}; tag=-; endpoint=-").as_str()),
        "answered by the router: {r:?}"
    );
    let body = r.text();
    assert!(
        body.contains(&format!(
            "caller {caller} may not call service {service} (allow-from {rule})"
        )),
        "{body}"
    );
}

/// An L4 connection from `pod` to `to`: whether the peer sent `ping` back
/// (served) or reset it before any byte (denied). Anything else fails.
fn echo_or_reset(pod: &laneway_tests::node::Pod, to: std::net::SocketAddr) -> Result<bool> {
    // The reset follows the handshake at once: the first call that looks
    // at the socket reports it (once), be it the end of connect(), the
    // write, or the read.
    let reset = |e: &std::io::Error| e.kind() == ErrorKind::ConnectionReset;
    let mut stream = match client::connect(pod, to) {
        Ok(stream) => stream,
        Err(e) if e.chain().any(|c| c.downcast_ref().is_some_and(reset)) => return Ok(false),
        Err(e) => return Err(e),
    };
    match stream.write_all(b"ping") {
        Err(e) if reset(&e) => return Ok(false),
        Err(e) => bail!("{} to {to}: write: {e}", pod.name),
        Ok(()) => {}
    }
    let mut back = [0; 4];
    match stream.read(&mut back) {
        Ok(4) if &back == b"ping" => Ok(true),
        Err(e) if reset(&e) => Ok(false),
        Ok(n) => bail!(
            "{} to {to}: neither served nor reset: read {n} bytes {:?}",
            pod.name,
            &back[..n]
        ),
        Err(e) => bail!("{} to {to}: neither served nor reset: {e}", pod.name),
    }
}

in_modes! {
    [socket => Socket, tc => Tc]: [
        a_listed_namespace_is_served_and_another_gets_403_or_a_reset,
        a_denied_grpc_call_gets_permission_denied_and_an_allowed_lane_is_served,
        with_kube_the_annotation_admits_its_namespace_and_a_bad_one_keeps_the_last_good_rule,
    ],
}

fn a_listed_namespace_is_served_and_another_gets_403_or_a_reset(mode: Mode) -> Result<()> {
    let s = guarded(mode)?;
    let (shop, other) = (s.node.pod(s.pods.client), s.node.pod(s.pods.client_joint1));
    let r = client::get(shop, s.reviews(), &[])?;
    assert!(r.routed() && r.endpoint() == "reviews-base", "{r:?}");

    let r = client::get(other, s.reviews(), &[])?;
    assert_denied(
        &r,
        "default/client-joint1",
        "default/reviews",
        "namespaces=shop",
    );
    assert!(r.text().ends_with("its namespace default is not listed\n"));
    // Nothing a request says is the caller's identity.
    let shop_ip = shop.ip.to_string();
    let forged = [
        ("x-forwarded-for", shop_ip.as_str()),
        ("forwarded", &format!("for={shop_ip}")),
        ("x-real-ip", shop_ip.as_str()),
        ("x-laneway-caller", "shop/client"),
        ("x-mse-tag", "joint1"),
    ];
    let r = client::get(other, s.reviews(), &forged)?;
    assert_denied(
        &r,
        "default/client-joint1",
        "default/reviews",
        "namespaces=shop",
    );

    // L4: the listed caller's bytes come back; the other's connection is
    // reset without a byte, and never reaches the endpoint (a `protocol:
    // tcp` port with a rule is not routed in the kernel).
    let echo = &s.backends[4];
    assert!(echo_or_reset(shop, s.echo())?, "shop/client is served");
    let accepted = echo.accepted();
    assert!(
        !echo_or_reset(other, s.echo())?,
        "default/client-joint1 is reset"
    );
    assert_eq!(echo.accepted(), accepted, "the endpoint saw no connection");

    assert_eq!(denied(&s.node, "default/reviews")?, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while denied(&s.node, "default/echo")? != 1 {
        ensure!(Instant::now() < deadline, "the L4 denial is not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(denied(&s.node, "default/ratings")?, 0);

    let e: api::Explanation = json(
        &s.node,
        &[
            "explain",
            "--from",
            "default/client-joint1",
            "--to",
            "reviews",
        ],
    )?;
    assert_eq!(e.decision.as_deref(), Some("denied"), "{e:#?}");
    let reason = e.reject.context("a reason")?;
    assert!(reason.contains("allow-from namespaces=shop"), "{reason}");
    let e: api::Explanation = json(
        &s.node,
        &["explain", "--from", "shop/client", "--to", "reviews"],
    )?;
    assert!(
        e.endpoint.is_some()
            && e.steps
                .iter()
                .any(|s| s == "allow-from namespaces=shop admits the caller"),
        "{e:#?}"
    );
    let events = trace(&s.node, &["--service", "reviews"], 1, || {
        client::get(other, s.reviews(), &[]).map(drop)
    })?;
    assert_eq!(
        (
            events[0].decision.as_deref(),
            events[0].caller.as_deref(),
            events[0].status
        ),
        (Some("denied"), Some("default/client-joint1"), 403)
    );
    Ok(())
}

fn a_denied_grpc_call_gets_permission_denied_and_an_allowed_lane_is_served(
    mode: Mode,
) -> Result<()> {
    // `client` is a base pod, `client-joint1` a joint1 one.
    let g = GrpcStandard::start(mode, |svc| {
        svc.policy = Some("{allow_from: 'lanes=base'}".into());
    })?;
    let pods = g.standard.pods;
    grpc::runtime()?.block_on(async {
        let ask = || EchoRequest {
            replies: 1,
            ..Default::default()
        };
        let mut allowed = g.client(pods.client)?;
        let reply = allowed.unary(tagged(ask(), Some("gray"))).await?;
        let reply = reply.into_inner();
        assert_eq!(
            (reply.endpoint.as_str(), reply.via_router),
            ("reviews-gray", true)
        );
        let mut refused = g.client(pods.client_joint1)?;
        // Its own lane, or one it claims: the caller pod decides.
        for claimed in [None, Some("base")] {
            let status = refused
                .unary(tagged(ask(), claimed))
                .await
                .expect_err("a joint1 pod is not allowed");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert_eq!(
                status.message(),
                "laneway: caller default/client-joint1 may not call service \
                 default/reviews-grpc (allow-from lanes=base): its lane joint1 is not listed"
            );
        }
        // The connection serves on for the allowed caller.
        let reply = allowed.unary(tagged(ask(), None)).await?;
        assert_eq!(reply.into_inner().endpoint, "reviews-base");
        anyhow::Ok(())
    })?;
    let metrics = scrape(&g.standard.node)?;
    for line in [
        "laneway_grpc_responses_total{service=\"default/reviews-grpc\",tag=\"\",grpc_status=\"7\"} 2",
        "laneway_denied_total{service=\"default/reviews-grpc\"} 2",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
    Ok(())
}

/// The `reviews` Service object in namespace `backends`, annotated
/// `laneway.io/allow-from: RULE`.
fn reviews_allowing(
    node: &Node,
    svc: &laneway_tests::ServiceSpec,
    rule: &str,
) -> k8s_openapi::api::core::v1::Service {
    let (mut s, _) = service(node, svc, "backends");
    s.metadata.annotations = Some(BTreeMap::from([(
        "laneway.io/allow-from".to_owned(),
        rule.to_owned(),
    )]));
    s
}

/// Repeats `get` until `check` holds (a change reaches the agent within its
/// debounce and a watch round trip).
fn eventually(
    what: &str,
    get: impl Fn() -> Result<Response>,
    check: impl Fn(&Response) -> bool,
) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = get();
        if let Ok(r) = &last
            && check(r)
        {
            return last;
        }
        ensure!(
            Instant::now() < deadline,
            "not within 10 s: {what}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_kube_the_annotation_admits_its_namespace_and_a_bad_one_keeps_the_last_good_rule(
    mode: Mode,
) -> Result<()> {
    let (node, mut scenario, pods, _backends) = standard::prepare()?;
    mode.apply(&mut scenario);
    let svc = scenario.services[0].clone();
    let mut cluster = Cluster::start(&node)?;
    cluster.api.apply(namespace("shop", true));
    cluster.api.apply(namespace("web", true));
    cluster.run_local_pod(&node, pods.client, "shop", None)?;
    cluster.run_local_pod(&node, pods.client_joint1, "web", Some("joint1"))?;
    for (index, tag) in &svc.endpoints {
        cluster
            .api
            .apply(pod(&node, *index, "backends", "node-2", tag.as_deref()));
    }
    let (_, slice) = service(&node, &svc, "backends");
    cluster
        .api
        .apply(reviews_allowing(&node, &svc, "namespaces=shop"));
    cluster.api.apply(slice);
    let _agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let reviews = Node::vip(&svc);
    let (shop, web) = (node.pod(pods.client), node.pod(pods.client_joint1));
    eventually(
        "shop/client is served",
        || client::get(shop, reviews, &[]),
        |r| r.routed() && r.endpoint() == "reviews-base",
    )?;
    let r = eventually(
        "web/client-joint1 is denied",
        || client::get(web, reviews, &[]),
        |r| r.status == 403,
    )?;
    assert_denied(
        &r,
        "web/client-joint1",
        "backends/reviews",
        "namespaces=shop",
    );

    cluster
        .api
        .apply(reviews_allowing(&node, &svc, "namespaces=shop;pods=web"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let services: api::Services = json(&node, &["services", "reviews"])?;
        let info = services.services.into_iter().next().context("reviews")?;
        if info.policy_error.is_some() || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = info.policy_error.context("the bad annotation is shown")?;
    assert!(
        error.contains("annotation laneway.io/allow-from") && error.contains("\"pods\""),
        "{error}"
    );
    assert_eq!(info.policy, "warmup 30s; allow-from namespaces=shop");
    let r = client::get(web, reviews, &[])?;
    assert_denied(
        &r,
        "web/client-joint1",
        "backends/reviews",
        "namespaces=shop",
    );
    let r = client::get(shop, reviews, &[])?;
    assert!(r.routed() && r.endpoint() == "reviews-base", "{r:?}");

    // Listing `web` admits it.
    cluster
        .api
        .apply(reviews_allowing(&node, &svc, "namespaces=shop,web"));
    eventually(
        "web/client-joint1 is served once listed",
        || client::get(web, reviews, &[]),
        |r| r.routed() && r.endpoint() == "reviews-joint1",
    )?;
    Ok(())
}

#[test]
fn the_lanes_condition_and_a_bad_rule_in_the_file_keep_the_last_good_rule() -> Result<()> {
    let s = Standard::start_with(|sc| {
        let client = sc.enrolled[0].0;
        sc.namespaces = vec![(client, "shop".into())];
        sc.services[0].policy = Some("{allow_from: 'namespaces=shop,default;lanes=joint1'}".into());
    })?;
    let (shop, joint1) = (s.node.pod(s.pods.client), s.node.pod(s.pods.client_joint1));
    let rule = "namespaces=default,shop;lanes=joint1";
    let r = client::get(shop, s.reviews(), &[("x-mse-tag", "joint1")])?;
    assert_denied(&r, "shop/client", "default/reviews", rule);
    assert!(r.text().ends_with("its lane base is not listed\n"), "{r:?}");
    let r = client::get(joint1, s.reviews(), &[])?;
    assert!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");

    let text = std::fs::read_to_string(&s.agent.config)?;
    std::fs::write(
        &s.agent.config,
        text.replace("lanes=joint1'", "lanes=joint1;pods=client'"),
    )?;
    s.agent
        .wait_for_log("config reload rejected", Duration::from_secs(5))?;
    let log = s.agent.log();
    assert!(
        log.contains("services[0].policy.allow_from") && log.contains("\"pods\""),
        "the error names field and bad part:\n{log}"
    );
    let r = client::get(shop, s.reviews(), &[])?;
    assert_denied(&r, "shop/client", "default/reviews", rule);
    let r = client::get(joint1, s.reviews(), &[])?;
    assert!(r.routed() && r.endpoint() == "reviews-joint1", "{r:?}");
    Ok(())
}

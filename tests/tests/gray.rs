//! Gray releases on the netns node: canary shares, sticky keys, match rules,
//! strict and permissive lanes, a lane across two hops, and policy changes
//! under load. Shares are checked statistically ([`shares::plausible`]).

use std::time::Duration;

use anyhow::Result;
use laneway_tests::{
    Agent, Node, ServiceSpec, Standard,
    backend::Backend,
    client::{self, Conn},
    shares, standard,
};

fn with_policy(policy: &'static str) -> Result<Standard> {
    Standard::start_with(|sc| sc.services[0].policy = Some(policy.into()))
}

/// The agent's count of `reviews` requests with `decision` (all tags and
/// status classes), from `/metrics`.
fn decisions_counted(s: &Standard, decision: &str) -> Result<u64> {
    let text = laneway_tests::admin::scrape(&s.node)?;
    let label = format!("decision=\"{decision}\"");
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("laneway_requests_total{service=\"default/reviews\"")
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum())
}

/// Sends `n` untagged requests over a few keep-alive connections; counts
/// answers by endpoint.
fn spread(
    s: &Standard,
    n: usize,
    headers: &[(&str, &str)],
) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut counts = std::collections::BTreeMap::new();
    let mut conns = (0..4)
        .map(|_| Conn::open(s.node.pod(s.pods.client), s.reviews()))
        .collect::<Result<Vec<_>>>()?;
    for i in 0..n {
        let r = conns[i % 4].get("/", headers)?;
        anyhow::ensure!(r.status == 200, "request {i}: {}", r.status);
        *counts.entry(r.endpoint().to_owned()).or_default() += 1;
    }
    Ok(counts)
}

#[test]
fn a_ten_percent_canary_gets_ten_percent_of_untagged_requests() -> Result<()> {
    let s = with_policy("{canary: gray=10}")?;
    let counts = spread(&s, 2000, &[])?;
    let gray = counts.get("reviews-gray").copied().unwrap_or(0);
    assert!(
        shares::plausible(2000, 0.10).contains(&gray),
        "gray got {gray} of 2000: {counts:?}"
    );
    assert_eq!(counts.get("reviews-joint1"), None, "no share for joint1");
    assert_eq!(counts.values().sum::<usize>(), 2000);

    // The canary decision is labelled and the lane travels upstream.
    let mut seen_canary = false;
    for _ in 0..100 {
        let r = client::get(s.node.pod(s.pods.client), s.reviews(), &[])?;
        if r.endpoint() == "reviews-gray" {
            assert!(
                r.header("x-laneway-route")
                    .unwrap_or("")
                    .contains("decision=canary")
            );
            assert_eq!(r.header("x-seen-tag"), Some("gray"));
            seen_canary = true;
            break;
        }
    }
    assert!(seen_canary);
    let canary = decisions_counted(&s, "canary")?;
    assert!(
        canary > gray as u64 && canary <= gray as u64 + 100,
        "/metrics counts {canary} canary decisions, gray answered {gray} + the probe"
    );
    // Tagged requests are not subject to shares.
    let tagged = spread(&s, 200, &[("x-mse-tag", "joint1")])?;
    assert_eq!(tagged.get("reviews-joint1"), Some(&200));
    Ok(())
}

#[test]
fn a_sticky_key_always_lands_on_the_same_side() -> Result<()> {
    let s = with_policy("{canary: gray=30, sticky: 'header:x-user-id'}")?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let mut gray_users = 0;
    for user in 0..100 {
        let id = format!("user-{user}");
        let sides: std::collections::BTreeSet<String> = (0..5)
            .map(|_| {
                conn.get("/", &[("x-user-id", &id)])
                    .map(|r| r.endpoint().to_owned())
            })
            .collect::<Result<_>>()?;
        assert_eq!(sides.len(), 1, "{id} flipped between {sides:?}");
        if sides.contains("reviews-gray") {
            gray_users += 1;
        }
    }
    // Different keys do split.
    assert!(
        shares::plausible(100, 0.30).contains(&gray_users),
        "{gray_users} of 100 users on gray"
    );
    Ok(())
}

#[test]
fn match_rules_by_header_cookie_and_query() -> Result<()> {
    let s = with_policy(
        r#"{match: [{header: x-user-type, exact: internal, tag: gray}, {cookie: beta, prefix: "yes", tag: joint1}, {query: lane, regex: "^g[0-9]+$", tag: gray}]}"#,
    )?;
    let client = s.node.pod(s.pods.client);
    let mut conn = Conn::open(client, s.reviews())?;
    assert_eq!(
        conn.get("/", &[("x-user-type", "internal")])?.endpoint(),
        "reviews-gray"
    );
    assert_eq!(
        conn.get("/", &[("x-user-type", "external")])?.endpoint(),
        "reviews-base"
    );
    assert_eq!(
        conn.get("/", &[("cookie", "a=1; beta=yes-please")])?
            .endpoint(),
        "reviews-joint1"
    );
    assert_eq!(
        conn.get("/", &[("cookie", "beta=no")])?.endpoint(),
        "reviews-base"
    );
    assert_eq!(conn.get("/items?lane=g42", &[])?.endpoint(), "reviews-gray");
    assert_eq!(conn.get("/items?lane=gx", &[])?.endpoint(), "reviews-base");
    // An explicit tag header wins over match rules.
    assert_eq!(
        conn.get("/", &[("x-user-type", "internal"), ("x-mse-tag", "joint1")])?
            .endpoint(),
        "reviews-joint1"
    );
    Ok(())
}

#[test]
fn strict_lanes_answer_503_and_permissive_lanes_fall_back() -> Result<()> {
    let s = with_policy("{lanes: 'joint2=strict'}")?;
    let client = s.node.pod(s.pods.client);
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint2")])?;
    assert_eq!(r.status, 503);
    let body = r.text();
    assert!(
        body.contains("joint2") && body.contains("default/reviews") && body.contains("strict"),
        "{body}"
    );
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint3")])?;
    assert_eq!(
        (r.status, r.endpoint()),
        (200, "reviews-base"),
        "permissive by default"
    );
    assert_eq!(decisions_counted(&s, "strict-reject")?, 1);
    assert_eq!(decisions_counted(&s, "fallback")?, 1);
    Ok(())
}

#[test]
fn a_sticky_cookie_keeps_each_user_on_one_side() -> Result<()> {
    let s = with_policy("{canary: gray=50, sticky: 'cookie:uid'}")?;
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let mut gray_users = 0;
    for user in 0..40 {
        let cookie = format!("theme=dark; uid=u{user}");
        let sides: std::collections::BTreeSet<String> = (0..4)
            .map(|_| {
                conn.get("/", &[("cookie", &cookie)])
                    .map(|r| r.endpoint().to_owned())
            })
            .collect::<Result<_>>()?;
        assert_eq!(sides.len(), 1, "uid=u{user} flipped between {sides:?}");
        gray_users += usize::from(sides.contains("reviews-gray"));
    }
    // Both sides get users.
    assert!(
        shares::plausible(40, 0.50).contains(&gray_users),
        "{gray_users} of 40 on gray"
    );
    Ok(())
}

#[test]
fn cluster_wide_defaults_apply_and_a_service_overrides_them_field_by_field() -> Result<()> {
    let s = with_policy("{canary: joint1=100}")?;
    let client = s.node.pod(s.pods.client);
    // The agent config's top-level policy: every service's default.
    s.agent.rewrite_config(|text| {
        format!("{text}policy: {{canary: gray=100, default_lane_mode: strict}}\n")
    })?;

    // reviews names its own canary; the lane mode comes from the default.
    assert_eq!(
        client::get(client, s.reviews(), &[])?.endpoint(),
        "reviews-joint1"
    );
    assert_eq!(
        client::get(client, s.reviews(), &[("x-mse-tag", "nolane")])?.status,
        503
    );
    // ratings has no policy of its own: the default canary (gray has no
    // endpoint there, so it takes nothing) and strict lanes.
    assert_eq!(
        client::get(client, s.ratings(), &[])?.endpoint(),
        "ratings-base"
    );
    let r = client::get(client, s.ratings(), &[("x-mse-tag", "joint1")])?;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("default/ratings"), "{}", r.text());
    Ok(())
}

#[test]
fn the_lane_survives_a_hop_when_the_app_forwards_the_header() -> Result<()> {
    // client -> frontend (base only, forwards x-mse-tag) -> reviews (has gray).
    let mut node = Node::new()?;
    let (mut scenario, pods) = standard::scenario(&mut node)?;
    let frontend = node.add_pod("frontend-base")?;
    let frontend_quiet = node.add_pod("frontend-quiet")?;
    scenario.services.push(ServiceSpec {
        name: "frontend".into(),
        vip: "10.96.0.20".parse()?,
        vip6: None,
        port: 80,
        target_port: 8080,
        protocol: "auto",
        policy: None,
        endpoints: vec![(frontend, None)],
    });
    scenario.services.push(ServiceSpec {
        name: "frontend-quiet".into(),
        vip: "10.96.0.21".parse()?,
        vip6: None,
        port: 80,
        target_port: 8080,
        protocol: "auto",
        policy: None,
        endpoints: vec![(frontend_quiet, None)],
    });
    scenario.enrolled.push((frontend, None));
    scenario.enrolled.push((frontend_quiet, None));
    let reviews = Node::vip(&scenario.services[0]);
    let mut backends = vec![
        Backend::http(node.pod(pods.base), 8080)?,
        Backend::http(node.pod(pods.gray), 8080)?,
        Backend::http(node.pod(pods.joint1), 8080)?,
        Backend::forwarder(node.pod(frontend), 8080, reviews, true)?,
        Backend::forwarder(node.pod(frontend_quiet), 8080, reviews, false)?,
    ];
    node.install_kube_proxy(&scenario)?;
    let agent = Agent::start(&node, &scenario)?;
    let client = node.pod(pods.client);

    let r = client::get(
        client,
        Node::vip(&scenario.services[3]),
        &[("x-mse-tag", "gray")],
    )?;
    assert_eq!(r.endpoint(), "frontend-base", "frontend has no gray: base");
    assert_eq!(
        r.header("x-seen-tag"),
        Some("gray"),
        "the lane travels even after fallback"
    );
    assert_eq!(
        r.header("x-upstream-endpoint"),
        Some("reviews-gray"),
        "second hop back in the lane"
    );
    assert_eq!(r.header("x-upstream-seen-tag"), Some("gray"));

    // The same through baggage: the member is kept up to date upstream.
    let r = client::get(
        client,
        Node::vip(&scenario.services[3]),
        &[("baggage", "x-mse-tag=gray,user=7")],
    )?;
    assert_eq!(r.header("x-seen-baggage"), Some("user=7,x-mse-tag=gray"));

    // An app that does not forward the header loses the lane at its hop.
    let r = client::get(
        client,
        Node::vip(&scenario.services[4]),
        &[("x-mse-tag", "gray")],
    )?;
    assert_eq!(r.header("x-upstream-endpoint"), Some("reviews-base"));
    drop(agent);
    backends.clear();
    Ok(())
}

#[test]
fn changing_the_policy_under_load_drops_no_request() -> Result<()> {
    let s = with_policy("{canary: gray=0}")?;
    let text = std::fs::read_to_string(&s.agent.config)?;
    let load = client::under_load(s.node.pod(s.pods.client), s.reviews(), || {
        for share in ["50", "100", "0", "25"] {
            std::thread::sleep(Duration::from_millis(400));
            s.agent
                .rewrite_config(|_| text.replace("gray=0", &format!("gray={share}")))?;
        }
        std::thread::sleep(Duration::from_millis(400));
        Ok(())
    })?;
    let (ok, failed) = (load.ok, load.failed);
    let gray = load.by_endpoint.get("reviews-gray").copied().unwrap_or(0);
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 200, "load ran: {ok} requests");
    assert!(gray > 0, "the new shares took effect: {gray} on gray");
    assert_eq!(s.agent.log().matches("config reloaded").count(), 4);
    Ok(())
}

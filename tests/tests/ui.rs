//! The lane map (`/ui` on the admin listener) in a real browser: headless
//! Chromium inside the node's netns, driven over the DevTools protocol. The
//! checks read what the page's script rendered from `/lanes` (the static
//! HTML names no service), so a broken script or document fails them.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use laneway::admin::api::LaneMap;
use laneway_tests::{
    Agent, Standard, StopOnDrop,
    browser::{Browser, ui_url},
    client::{self, Conn},
    kube::{reviews_cluster, service},
    standard,
};

const WAIT: Duration = Duration::from_secs(10);

/// Where the screenshot goes (the README shows a copy, docs/lane-map.png).
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui/lane-map.png")
}

/// `n` requests to reviews from the untagged client with `headers`; each
/// must succeed.
fn send(s: &Standard, n: usize, headers: &[(&str, &str)]) -> Result<()> {
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    for i in 0..n {
        let status = conn.get("/", headers)?.status;
        anyhow::ensure!(status == 200, "request {i} with {headers:?}: {status}");
    }
    Ok(())
}

/// The CSS selector of a lane's card; `service` without a namespace is in
/// `default`.
fn lane(service: &str, lane: &str) -> String {
    let service = match service.contains('/') {
        true => service.to_owned(),
        false => format!("default/{service}"),
    };
    format!("[data-lane=\"{service} {lane}\"]")
}

/// JavaScript: whether the element matching `selector` shows `text`.
fn shows(selector: &str, text: &str) -> String {
    format!(
        "(document.querySelector({}) || {{innerText: ''}}).innerText.includes({})",
        serde_json::json!(selector),
        serde_json::json!(text)
    )
}

#[test]
fn the_lane_map_shows_lanes_endpoints_traffic_and_a_canary_change() -> Result<()> {
    let s = Standard::start_with(|sc| {
        sc.services[0].policy = Some(
            "{canary: gray=10, match: [{header: x-user-type, exact: internal, tag: gray}]}".into(),
        )
    })?;
    // Counted traffic first: exact totals to find on the page.
    send(&s, 7, &[("x-mse-tag", "joint1")])?;
    send(&s, 3, &[("x-mse-tag", "joint2")])?;

    let mut page = Browser::open(&s.node, &ui_url(""), (1440, 1100))?;
    page.wait_for(
        "document.querySelector('[data-service=\"default/reviews\"]') !== null",
        WAIT,
    )?;

    // Every service, its lanes side by side, their endpoints with state.
    for service in ["default/reviews", "default/ratings", "default/echo"] {
        let card = page.text(&format!("[data-service=\"{service}\"]"))?;
        assert!(card.is_some(), "{service} is on the page");
    }
    let base = page
        .text(&lane("reviews", "base"))?
        .context("reviews base")?;
    assert!(
        base.contains("reviews-base") && base.contains("serving"),
        "{base}"
    );
    let joint1 = page.text(&lane("reviews", "joint1"))?.context("joint1")?;
    assert!(joint1.contains("reviews-joint1"), "{joint1}");
    assert!(joint1.contains("permissive"), "lane mode: {joint1}");
    let gray = page.text(&lane("reviews", "gray"))?.context("gray")?;
    assert!(gray.contains("reviews-gray"), "{gray}");
    assert!(gray.contains("canary 10%"), "the share in force: {gray}");
    assert!(
        gray.contains("match header:x-user-type=internal"),
        "the match rule: {gray}"
    );
    let ratings = page.text(&lane("ratings", "base"))?.context("ratings")?;
    assert!(ratings.contains("ratings-base"), "{ratings}");
    // The counters by lane and decision: joint1's tagged requests, and
    // joint2 (a tag reviews does not know) falling back.
    assert_eq!(
        page.text(&format!(
            "{} tr[data-decision=\"tagged\"] .total",
            lane("reviews", "joint1")
        ))?
        .as_deref(),
        Some("7")
    );
    assert_eq!(
        page.text(&format!(
            "{} tr[data-decision=\"fallback\"] .total",
            lane("reviews", "other tags")
        ))?
        .as_deref(),
        Some("3")
    );
    let policy = page.text("[data-service=\"default/reviews\"] [data-policy=\"canary\"]")?;
    assert_eq!(policy.as_deref(), Some("canary gray=10"));

    // Live traffic while the page polls: rates appear, and a canary change
    // in the static file shows on the next poll, without a reload.
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let _stop = StopOnDrop(&stop);
        let traffic = scope.spawn(|| -> Result<()> {
            let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
            while !stop.load(Ordering::Relaxed) {
                for headers in [&[][..], &[("x-mse-tag", "joint1")], &[][..]] {
                    anyhow::ensure!(conn.get("/", headers)?.status == 200);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        s.agent
            .rewrite_config(|text| text.replace("canary: gray=10", "canary: gray=25"))?;
        let gray = lane("reviews", "gray");
        page.wait_for(&shows(&format!("{gray} .canary"), "canary 25%"), WAIT)?;
        assert!(
            page.eval("performance.getEntriesByType('navigation').length")? == 1,
            "one load: the page polled, it was not reloaded"
        );
        // Rates: requests per second from successive polls.
        let rate = format!(
            "parseFloat(document.querySelector({}).innerText) > 0",
            serde_json::json!(format!("{} .lane-rate", lane("reviews", "joint1")))
        );
        page.wait_for(&rate, WAIT)?;
        page.screenshot(&screenshot_path())?;
        stop.store(true, Ordering::Relaxed);
        traffic.join().expect("traffic thread")?;
        Ok(())
    })?;
    let policy = page.text("[data-service=\"default/reviews\"] [data-policy=\"canary\"]")?;
    assert_eq!(policy.as_deref(), Some("canary gray=25"));

    // The search box filters services, lanes and endpoints, and the
    // address keeps the filter for a shared link.
    page.type_into("#q", "ratings")?;
    page.wait_for(
        "!document.querySelector('[data-service=\"default/reviews\"]') \
         && !!document.querySelector('[data-service=\"default/ratings\"]')",
        WAIT,
    )?;
    assert_eq!(page.eval("location.search")?, "?q=ratings");
    // A tag finds its lanes (not every lane of a service whose policy names it).
    page.navigate(&ui_url("?q=gray"))?;
    page.wait_for(&shows(&lane("reviews", "gray"), "reviews-gray"), WAIT)?;
    let lanes =
        page.eval("[...document.querySelectorAll('[data-lane]')].map(e => e.dataset.lane)")?;
    assert_eq!(lanes, serde_json::json!(["default/reviews gray"]));
    // So does an endpoint's pod name.
    page.navigate(&ui_url("?q=reviews-gray"))?;
    page.wait_for(&shows(&lane("reviews", "gray"), "reviews-gray"), WAIT)?;
    let lanes =
        page.eval("[...document.querySelectorAll('[data-lane]')].map(e => e.dataset.lane)")?;
    assert_eq!(lanes, serde_json::json!(["default/reviews gray"]));
    assert_eq!(
        page.eval("document.getElementById('q').value")?,
        "reviews-gray"
    );
    Ok(())
}

#[test]
fn lanes_and_the_page_are_served_where_metrics_is() -> Result<()> {
    let s = Standard::start()?;
    client::get(
        s.node.pod(s.pods.client),
        s.reviews(),
        &[("x-mse-tag", "gray")],
    )?;
    let (status, body) = s.node.admin_get("/lanes")?;
    assert_eq!(status, 200, "{body}");
    let map: LaneMap = serde_json::from_str(&body)?;
    let reviews = map
        .services
        .iter()
        .find(|svc| svc.name == "reviews")
        .context("reviews")?;
    let gray = reviews
        .lanes
        .iter()
        .find(|l| l.tag.as_deref() == Some("gray"))
        .context("gray lane")?;
    assert_eq!(gray.endpoints[0].name.as_deref(), Some("reviews-gray"));
    assert_eq!(gray.endpoints[0].state, "serving");
    assert_eq!(
        gray.requests
            .iter()
            .map(|c| (c.decision.as_str(), c.total))
            .collect::<Vec<_>>(),
        [("tagged", 1)]
    );
    // `laneway lanes` reads the same document.
    let out = laneway_tests::admin::laneway(&s.node, &["lanes"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "gray",
                    "permissive",
                    "-",
                    "reviews-gray",
                    "serving",
                    "tagged",
                    "1"
                ]),
        "{text}"
    );
    // The same document on the admin socket, for scripts.
    let answer = {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(s.node.admin_socket())?;
        socket.write_all(b"GET /lanes HTTP/1.1\r\nhost: laneway\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer)?;
        answer
    };
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let on_socket: LaneMap = serde_json::from_str(body)?;
    assert_eq!(on_socket.services.len(), map.services.len());
    for path in ["/ui", "/ui/app.js", "/ui/style.css"] {
        let (status, body) = s.node.admin_get(path)?;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    Ok(())
}

#[test]
fn the_lane_map_follows_service_annotations_with_kube() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let spec = &scenario.services[0];
    let reviews = |canary: &str| {
        let (mut svc, _) = service(&node, spec, "backends");
        svc.metadata.annotations = Some(
            [
                ("laneway.io/canary", canary),
                ("laneway.io/lanes", "joint1=strict"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        svc
    };
    let cluster = reviews_cluster(&node, &scenario, &pods, reviews("gray=10"))?;
    let _agent = Agent::start_kube(&node, &scenario, &cluster)?;
    let mut page = Browser::open(&node, &ui_url(""), (1280, 900))?;
    let gray = lane("backends/reviews", "gray");
    page.wait_for(&shows(&gray, "canary 10%"), WAIT)?;
    let joint1 = page.text(&lane("backends/reviews", "joint1"))?;
    assert!(
        joint1.as_deref().is_some_and(|t| t.contains("strict")),
        "{joint1:?}"
    );

    // A new share shows on a poll; a bad one shows its error while the
    // last good share stays in force, and on the page.
    cluster.api.apply(reviews("gray=30"));
    page.wait_for(&shows(&gray, "canary 30%"), WAIT)?;
    cluster.api.apply(reviews("gray=200"));
    let service = "[data-service=\"backends/reviews\"]";
    page.wait_for(
        &shows(&format!("{service} .policy-error"), "laneway.io/canary"),
        WAIT,
    )?;
    assert!(page.text(&gray)?.is_some_and(|t| t.contains("canary 30%")));
    Ok(())
}

//! The router over real loopback sockets, with no kernel programs: its
//! listener is treated as transparent, so a connection's local address (the
//! listener's own, 127.0.0.1:PORT) is the "VIP" the client dialled, and the
//! test config names that address as a service.

use std::{collections::HashMap, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    time::{Instant, sleep},
};

use super::*;
use crate::{
    admin::metrics::Gauges,
    config::Config,
    proxy::tests::{Backend, Client, WAIT, echo, spawn_server},
};

/// A router serving one test config.
struct TestRouter {
    router: Arc<Router>,
    /// Where clients connect: the service's "VIP" and port.
    addr: SocketAddr,
}

impl TestRouter {
    /// Starts a router whose config is `config(port)`, `port` being the
    /// port clients connect to (use it as the service port on VIP
    /// 127.0.0.1).
    async fn start(config: impl FnOnce(u16) -> String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new(
            applied(&config(addr.port()), None),
            ProxyConfig {
                sniff_timeout: Duration::from_millis(100),
                ..ProxyConfig::default()
            },
            // A transparent listener: the destination is the local address.
            None,
        );
        tokio::spawn(router.clone().serve(listener, true));
        Self { router, addr }
    }

    /// Applies `config` as a reload would.
    fn reload(&self, config: &str) {
        let previous = self.router.applied();
        self.router.swap(applied(config, Some(&previous.snapshot)));
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// The `/metrics` text.
    fn metrics(&self) -> String {
        self.router.telemetry.metrics.render(&Gauges::default())
    }

    /// Waits until the `/metrics` text contains `line`.
    async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics();
            if text.contains(line) {
                return;
            }
            assert!(Instant::now() < deadline, "no {line:?} in\n{text}");
            sleep(Duration::from_millis(10)).await;
        }
    }
}

fn applied(config: &str, previous: Option<&Snapshot>) -> Applied {
    let config = Config::parse(config).expect("valid test config");
    Applied {
        snapshot: Snapshot::from_config(&config, "test".into(), previous, previous.is_none()),
        pods_by_cookie: HashMap::new(),
        netns: HashMap::new(),
        unenrolled: Vec::new(),
    }
}

/// Service `default/reviews` on 127.0.0.1:`port` (HTTP) with a base
/// endpoint on `base` and a `gray` one on `gray`; tag headers `headers`.
fn reviews(port: u16, base: u16, gray: u16, headers: &str) -> String {
    format!(
        "tags: {{headers: [{headers}], strip_from_unknown_callers: false}}
services:
  - name: reviews
    vips: [127.0.0.1]
    ports: [{{port: {port}, name: http, protocol: http}}]
    endpoints:
      - {{ip: 127.0.0.1, ports: {{http: {base}}}}}
      - {{ip: 127.0.0.1, tag: gray, ports: {{http: {gray}}}}}
"
    )
}

#[tokio::test]
async fn a_reload_of_tag_headers_changes_the_header_written_upstream() {
    let (base, gray) = (Backend::start("base").await, Backend::start("gray").await);
    let (b, g) = (base.addr.port(), gray.addr.port());
    let t = TestRouter::start(|port| reviews(port, b, g, "x-mse-tag")).await;
    let mut c = t.client().await;
    c.send(b"GET /1 HTTP/1.1\r\nhost: reviews\r\nx-mse-tag: gray\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 200);

    t.reload(&reviews(t.addr.port(), b, g, "x-lane"));
    let mut c = t.client().await;
    c.send(b"GET /2 HTTP/1.1\r\nhost: reviews\r\nx-lane: gray\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 200);
    let seen = gray.seen();
    assert!(seen[0].raw_head.contains("x-mse-tag: gray\r\n"), "{seen:?}");
    assert!(
        seen[1].raw_head.contains("x-lane: gray\r\n") && !seen[1].raw_head.contains("x-mse-tag"),
        "the header in force after the reload is written upstream: {:?}",
        seen[1].raw_head
    );
}

#[tokio::test]
async fn an_l4_stream_is_counted_when_it_ends() {
    let echo = spawn_server(echo).await;
    let t = TestRouter::start(|port| {
        format!(
            "services:
  - name: echo
    vips: [127.0.0.1]
    ports: [{{port: {port}, target_port: {}, protocol: tcp}}]
    endpoints: [{{ip: 127.0.0.1}}]
",
            echo.port()
        )
    })
    .await;
    let mut c = t.client().await;
    c.send(b"\x16\x03\x01 not http").await;
    c.s.shutdown().await.unwrap();
    let mut back = Vec::new();
    c.s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"\x16\x03\x01 not http");
    t.wait_for_metric(
        "laneway_requests_total{service=\"default/echo\",tag=\"\",decision=\"base\",status_class=\"none\"} 1\n",
    )
    .await;
}

#[tokio::test]
async fn a_strict_lane_answers_503_with_the_route_header_when_asked() {
    let base = Backend::start("base").await;
    let b = base.addr.port();
    let t = TestRouter::start(|port| {
        format!(
            "services:
  - name: reviews
    vips: [127.0.0.1]
    ports: [{{port: {port}, target_port: {b}}}]
    policy: {{lanes: gray=strict}}
    endpoints: [{{ip: 127.0.0.1}}]
tags: {{strip_from_unknown_callers: false}}
"
        )
    })
    .await;
    let mut c = t.client().await;
    c.send(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-mse-tag: gray\r\nx-laneway-route: 1\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-laneway-route"),
        Some("decision=strict-reject; service=default/reviews; tag=gray; endpoint=-")
    );
    // Not asked: not added.
    c.send(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-mse-tag: gray\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.header("x-laneway-route")), (503, None));
}

#[tokio::test]
async fn every_known_service_has_its_error_counters_at_zero() {
    let t = TestRouter::start(|port| reviews(port, 1, 2, "x-mse-tag")).await;
    let text = t.metrics();
    for line in [
        "# TYPE laneway_policy_errors counter\n",
        "laneway_policy_errors_total{service=\"default/reviews\"} 0\n",
        "# TYPE laneway_upstream_connect_errors counter\n",
        "laneway_upstream_connect_errors_total{service=\"default/reviews\"} 0\n",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    t.reload(&reviews(t.addr.port(), 1, 2, "x-mse-tag").replace("reviews", "ratings"));
    assert!(
        t.metrics()
            .contains("laneway_policy_errors_total{service=\"default/ratings\"} 0\n"),
        "a service that comes with a reload gets its series too"
    );
}

#[tokio::test]
async fn http2_streams_of_one_connection_are_routed_and_counted_each_on_its_own() {
    use crate::proxy::h2::tests::{self as h2t, Backend as H2Backend};
    let (release, held) = tokio::sync::watch::channel(false);
    let base = H2Backend::start(None, h2t::held(held.clone())).await;
    let gray = H2Backend::start(None, h2t::held(held)).await;
    let (b, g) = (base.addr.port(), gray.addr.port());
    let t = TestRouter::start(|port| {
        reviews(port, b, g, "x-mse-tag").replace("protocol: http", "protocol: grpc")
            + "    policy: {lanes: joint1=strict}\n"
    })
    .await;
    let send = h2t::client(t.addr).await;
    // Known as HTTP/2 from its preface, before any stream.
    let mut shown = Vec::new();
    for _ in 0..250 {
        shown = t.router.telemetry.conns.list();
        if shown.first().is_some_and(|c| c.protocol != "sniffing") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let first = shown.first().expect("the connection is listed");
    assert_eq!((first.protocol.as_str(), first.requests), ("h2", 0));
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let send = send.clone();
            let gray = i % 2 == 0;
            let headers: &[_] = if gray { &[("x-mse-tag", "gray")] } else { &[] };
            tokio::spawn(async move { (gray, h2t::get(&send, "/", headers).await) })
        })
        .collect();
    base.wait_streams(3).await;
    gray.wait_streams(3).await;
    // Six streams in flight on one connection, each holding its own state.
    let conns = t.router.telemetry.conns.list();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        (conns[0].protocol.as_str(), conns[0].open_streams),
        ("h2", 6)
    );
    let in_flight: Vec<u32> = t.router.applied().snapshot.ports[0]
        .backends
        .iter()
        .map(|b| b.load.in_flight.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(in_flight, [3, 3], "in flight per endpoint");
    release.send_replace(true);
    for call in calls {
        let (gray, answer) = call.await.unwrap();
        assert_eq!(answer.head.status(), 200);
        let lane = if gray { "gray" } else { "-" };
        assert_eq!(
            answer.header("x-seen-tag"),
            lane,
            "the resolved tag upstream"
        );
    }
    // A gRPC call for a strict lane without endpoints: UNAVAILABLE, counted.
    let strict = h2t::get(
        &send,
        "/svc/Call",
        &[
            ("x-mse-tag", "joint1"),
            ("content-type", "application/grpc"),
        ],
    )
    .await;
    assert_eq!(strict.header("grpc-status"), "14");
    assert!(strict.header("grpc-message").contains("default/reviews"));
    t.wait_for_metric(
        "laneway_grpc_responses_total{service=\"default/reviews\",tag=\"joint1\",grpc_status=\"14\"} 1\n",
    )
    .await;
    t.wait_for_metric(
        "laneway_grpc_responses_total{service=\"default/reviews\",tag=\"\",grpc_status=\"0\"} 3\n",
    )
    .await;
}

/// Service `default/reviews` on 127.0.0.1:`port` (HTTP, its base endpoint
/// on `base`) and `default/echo` on 127.0.0.1:`echo_port` (`protocol:
/// tcp`, its endpoint on `echo`), both allowing `rule`; the caller at
/// 127.0.0.1 is pod `shop/client`.
fn guarded(port: u16, base: u16, echo_port: u16, echo: u16, rule: &str) -> String {
    format!(
        "services:
  - name: reviews
    vips: [127.0.0.1]
    ports: [{{port: {port}, target_port: {base}, protocol: http}}]
    policy: {{allow_from: '{rule}'}}
    endpoints: [{{ip: 127.0.0.1}}]
  - name: echo
    vips: [127.0.0.1]
    ports: [{{port: {echo_port}, target_port: {echo}, protocol: tcp}}]
    policy: {{allow_from: '{rule}'}}
    endpoints: [{{ip: 127.0.0.1}}]
pods:
  - {{name: client, namespace: shop, netns: /nonexistent, ips: [127.0.0.1]}}
"
    )
}

#[tokio::test]
async fn allow_from_serves_listed_callers_and_refuses_others_with_403_over_http1_and_http2_or_a_reset()
 {
    let base = Backend::start("base").await;
    let echo_server = spawn_server(echo).await;
    // The echo service's port is a second listener of the same router.
    let echo_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo_listener.local_addr().unwrap().port();
    let (b, e) = (base.addr.port(), echo_server.port());
    let t = TestRouter::start(|port| guarded(port, b, echo_port, e, "namespaces=shop")).await;
    tokio::spawn(t.router.clone().serve(echo_listener, true));
    let echo_addr = SocketAddr::from(([127, 0, 0, 1], echo_port));

    let mut c = t.client().await;
    c.send(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200, "shop/client is listed");
    let mut s = tokio::net::TcpStream::connect(echo_addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    t.reload(&guarded(
        t.addr.port(),
        b,
        echo_port,
        e,
        "namespaces=checkout",
    ));
    c.send(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-laneway-route: 1\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        "laneway: caller shop/client may not call service default/reviews \
         (allow-from namespaces=checkout): its namespace shop is not listed\n"
    );
    assert_eq!(
        r.header("x-laneway-route"),
        Some("decision=denied; service=default/reviews; tag=-; endpoint=-")
    );
    // Plain HTTP/2 (the port is `http`: the preface selects it) alike.
    let h2 = crate::proxy::h2::tests::client(t.addr).await;
    let answer = crate::proxy::h2::tests::get(&h2, "/", &[]).await;
    assert_eq!(answer.head.status(), 403);
    assert_eq!(
        answer.text(),
        "laneway: caller shop/client may not call service default/reviews \
         (allow-from namespaces=checkout): its namespace shop is not listed\n"
    );
    assert_eq!(
        base.seen().len(),
        1,
        "the denied requests reached no endpoint"
    );
    let mut s = tokio::net::TcpStream::connect(echo_addr).await.unwrap();
    let read = s.read(&mut [0; 16]).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a refused L4 stream is reset, not ended"
    );
    t.wait_for_metric("laneway_denied_total{service=\"default/reviews\"} 2\n")
        .await;
    t.wait_for_metric("laneway_denied_total{service=\"default/echo\"} 1\n")
        .await;
    t.wait_for_metric(
        "laneway_requests_total{service=\"default/reviews\",tag=\"\",decision=\"denied\",status_class=\"4xx\"} 2\n",
    )
    .await;
}

/// Service `default/reviews` on 127.0.0.1:`port` with endpoints
/// `reviews-base` on `base` and `reviews-gray` (lane gray) on `gray`, and
/// the policy `policy`.
fn named_reviews(port: u16, base: u16, gray: u16, policy: &str) -> String {
    format!(
        "tags: {{strip_from_unknown_callers: false}}
services:
  - name: reviews
    vips: [127.0.0.1]
    ports: [{{port: {port}, name: http, protocol: http}}]
    policy: {policy}
    endpoints:
      - {{ip: 127.0.0.1, name: reviews-base, ports: {{http: {base}}}}}
      - {{ip: 127.0.0.1, name: reviews-gray, tag: gray, ports: {{http: {gray}}}}}
"
    )
}

#[tokio::test]
async fn a_pinned_request_reaches_its_endpoint_and_the_pin_never_goes_upstream() {
    let (base, gray) = (Backend::start("base").await, Backend::start("gray").await);
    let (b, g) = (base.addr.port(), gray.addr.port());
    let t = TestRouter::start(|port| named_reviews(port, b, g, "{endpoint_pinning: true}")).await;
    let mut c = t.client().await;
    // Untagged, pinned to the gray pod: the pin overrides the lane.
    c.send(b"GET /1 HTTP/1.1\r\nhost: reviews\r\nx-laneway-endpoint: reviews-gray\r\nx-laneway-route: 1\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-laneway-route"),
        Some(
            format!("decision=pinned; service=default/reviews; tag=-; endpoint=127.0.0.1:{g}")
                .as_str()
        )
    );
    let seen = gray.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0]
            .raw_head
            .to_ascii_lowercase()
            .contains("x-laneway-endpoint"),
        "{:?}",
        seen[0].raw_head
    );
    // Unknown: 503 naming service and endpoint, no fallback.
    c.send(b"GET /2 HTTP/1.1\r\nhost: reviews\r\nx-laneway-endpoint: reviews-nope\r\n\r\n")
        .await;
    let r = c.response().await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{body}");
    assert!(
        body.contains("default/reviews") && body.contains("reviews-nope"),
        "{body}"
    );
    assert!(base.seen().is_empty(), "never a silent fallback");
    t.wait_for_metric("decision=\"pinned\",status_class=\"2xx\"} 1\n")
        .await;
    t.wait_for_metric("decision=\"pinned\",status_class=\"5xx\"} 1\n")
        .await;

    // Without pinning the header is ignored, and still not forwarded.
    t.reload(&named_reviews(t.addr.port(), b, g, "{}"));
    let mut c = t.client().await;
    c.send(b"GET /3 HTTP/1.1\r\nhost: reviews\r\nx-laneway-endpoint: reviews-gray\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 200);
    let seen = base.seen();
    assert_eq!(seen.len(), 1, "untagged: base");
    assert!(
        !seen[0]
            .raw_head
            .to_ascii_lowercase()
            .contains("x-laneway-endpoint"),
        "{:?}",
        seen[0].raw_head
    );
}

#[tokio::test]
async fn a_pin_does_not_pass_an_allow_from_rule() {
    let (base, gray) = (Backend::start("base").await, Backend::start("gray").await);
    let (b, g) = (base.addr.port(), gray.addr.port());
    // The caller at 127.0.0.1 is no pod, so every rule refuses it.
    let t = TestRouter::start(|port| {
        named_reviews(
            port,
            b,
            g,
            "{endpoint_pinning: true, allow_from: 'namespaces=default'}",
        )
    })
    .await;
    let mut c = t.client().await;
    c.send(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-laneway-endpoint: reviews-gray\r\nx-laneway-route: 1\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-laneway-route"),
        Some("decision=denied; service=default/reviews; tag=-; endpoint=-")
    );
    assert!(gray.seen().is_empty() && base.seen().is_empty());
}

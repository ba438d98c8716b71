//! Bad input through the real router on the netns node: each case gets the
//! right status or a clean close, the router keeps serving, and a well-behaved
//! client running alongside never sees a failure.

use std::{
    io::{Read, Write},
    net::Shutdown,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use laneway_tests::{
    ServiceSpec, Standard,
    backend::Backend,
    client::{self, Conn},
};

/// A response head promising 1000 bytes, then 7 of them: an upstream that
/// goes away in the middle of its answer.
const TRUNCATED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial";

/// The standard node with a 1 s header timeout and three services on the
/// ratings pod whose endpoints misbehave: `garbage` answers with something
/// that is not HTTP, `truncated` closes in the middle of its answer,
/// `reset` resets in the middle of it.
fn node() -> Result<(Standard, Vec<Backend>)> {
    let s = Standard::start_with(|sc| {
        sc.router_extra = "  header_timeout: 1s\n".into();
        let ratings = sc.services[1].endpoints[0].0;
        for (name, vip, port) in [
            ("garbage", "10.96.0.13", 9090),
            ("truncated", "10.96.0.14", 9091),
            ("reset", "10.96.0.15", 9092),
        ] {
            sc.services.push(ServiceSpec {
                name: name.into(),
                vip: vip.parse().expect("ip"),
                vip6: None,
                port: 80,
                target_port: port,
                protocol: "http",
                policy: None,
                endpoints: vec![(ratings, None)],
            });
        }
    })?;
    let pod = s.node.pod(s.pods.ratings);
    let misbehaving = vec![
        Backend::raw(pod, 9090, b"NOT HTTP AT ALL\r\n\r\n")?,
        Backend::raw(pod, 9091, TRUNCATED)?,
        Backend::raw_then_reset(pod, 9092, TRUNCATED)?,
    ];
    Ok((s, misbehaving))
}

/// A request that must never reach a backend: smuggled after a bad one.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nhost: x\r\nx-mse-tag: gray\r\n\r\n";

/// Sends `raw` on a fresh connection from the client pod while a good
/// request is in flight on another; returns the status of the answer (0 for
/// a close without one) and whether the router then closed the connection.
/// The good request must be answered by its lane.
fn answer_to(s: &Standard, raw: &[u8]) -> Result<(u16, bool)> {
    let client = s.node.pod(s.pods.client);
    let mut good = Conn::open(client, s.reviews())?;
    good.send_raw(b"GET /good HTTP/1.1\r\nhost: x\r\nx-mse-tag: joint1\r\n\r\n")?;
    let mut conn = Conn::open(client, s.reviews())?;
    let _ = conn.send_raw(raw);
    let answer = conn.read_response();
    let status = answer.as_ref().map_or(0, |r| r.status);
    if let Ok(r) = &answer {
        anyhow::ensure!(
            r.endpoint().is_empty(),
            "the router answers, not a backend: {r:?}"
        );
    }
    let closed = conn.closed_within(Duration::from_secs(2))?;
    let r = good.read_response()?;
    anyhow::ensure!(
        (r.status, r.endpoint()) == (200, "reviews-joint1"),
        "the request in flight alongside: {r:?}"
    );
    Ok((status, closed))
}

#[test]
fn bad_requests_get_the_right_status_and_nobody_else_notices() -> Result<()> {
    let (s, _garbage) = node()?;
    // A well-behaved client all along.
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| -> Result<()> {
        let _stop_on_exit = laneway_tests::StopOnDrop(&stop);
        {
            let (stop, good, bad, s) = (stop.clone(), good.clone(), bad.clone(), &s);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match client::get(
                        s.node.pod(s.pods.client),
                        s.reviews(),
                        &[("x-mse-tag", "joint1")],
                    ) {
                        Ok(r) if r.status == 200 && r.endpoint() == "reviews-joint1" => {
                            good.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let cases: &[(&str, &[u8], u16)] = &[
            ("malformed request line", b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", 400),
            ("unknown HTTP version", b"GET / HTTP/7.0\r\nhost: x\r\n\r\n", 400),
            ("invalid header bytes", b"GET / HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n", 400),
            ("header name with a space", b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
            ("obs-fold", b"GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n", 400),
            ("conflicting Content-Length", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400),
            ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("Transfer-Encoding not ending in chunked", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 400),
            ("huge chunk size", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 400),
        ];
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(80 * 1024)
        );
        let many: String = std::iter::once("GET / HTTP/1.1\r\nhost: x\r\n".to_owned())
            .chain((0..120).map(|i| format!("x-h{i}: v\r\n")))
            .chain(std::iter::once("\r\n".to_owned()))
            .collect();
        let long: &[(&str, &[u8], u16)] = &[
            ("over-long head", big.as_bytes(), 431),
            ("more header fields than allowed", many.as_bytes(), 431),
        ];
        for (what, raw, want) in cases.iter().chain(long) {
            // Each with a request smuggled behind it.
            let (status, closed) = answer_to(&s, &[*raw, SMUGGLED].concat())?;
            assert_eq!(status, *want, "{what}");
            assert!(closed, "{what}: the connection is closed after the {want}");
        }
        assert_eq!(
            s.backends[2].accepted(),
            0,
            "nothing smuggled reached the gray endpoint"
        );

        // Duplicate, identical Content-Length: one length (RFC 9110 8.6).
        let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
        conn.send_raw(b"POST / HTTP/1.1\r\nhost: x\r\nx-mse-tag: joint1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc")?;
        let r = conn.read_response()?;
        assert_eq!(
            (r.status, r.endpoint(), r.header("x-body-bytes")),
            (200, "reviews-joint1", Some("3"))
        );

        // Pipelined requests: answered in order on one connection.
        let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
        conn.send_raw(b"GET /1 HTTP/1.1\r\nhost: x\r\nx-mse-tag: gray\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\nx-mse-tag: joint1\r\n\r\n")?;
        assert_eq!(conn.read_response()?.endpoint(), "reviews-gray");
        assert_eq!(conn.read_response()?.endpoint(), "reviews-joint1");

        // Slowloris: a head that never finishes gets 408 after header_timeout.
        let mut slow = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
        slow.send_raw(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")?;
        let started = Instant::now();
        assert_eq!(slow.read_response()?.status, 408);
        assert!(started.elapsed() < Duration::from_secs(5));

        // An upstream answering garbage: 502.
        let garbage = s.node.pod(s.pods.client);
        let r = client::get(garbage, "10.96.0.13:80".parse()?, &[])?;
        assert_eq!(r.status, 502, "{r:?}");

        // Half-close after the request: the answer still comes.
        let mut half = client::connect(s.node.pod(s.pods.client), s.reviews())?;
        half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        half.shutdown(Shutdown::Write)?;
        let mut answer = String::new();
        half.read_to_string(&mut answer)?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // A reset in the middle of a head, and in the middle of a body:
        // nothing breaks (the well-behaved client and the last request say).
        for partial in [
            b"GET / HTTP/1.1\r\nho".as_slice(),
            b"POST / HTTP/1.1\r\nhost: x\r\nx-mse-tag: gray\r\ncontent-length: 100000\r\n\r\n0123456789",
        ] {
            let reset = client::connect(s.node.pod(s.pods.client), s.reviews())?;
            (&reset).write_all(partial)?;
            std::thread::sleep(Duration::from_millis(100));
            client::reset_on_close(&reset)?;
            drop(reset);
        }

        // An upstream that closes, or resets, in the middle of its answer:
        // the head was passed on, so the client's connection is closed
        // before the promised length, never left hanging.
        for vip in ["10.96.0.14:80", "10.96.0.15:80"] {
            let mut conn = Conn::open(s.node.pod(s.pods.client), vip.parse()?)?;
            conn.send_raw(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")?;
            let started = Instant::now();
            let answer = conn.read_response();
            assert!(
                answer.is_err(),
                "{vip}: a cut answer is not a whole one: {answer:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{vip}: closed at once"
            );
        }

        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    })?;
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "the well-behaved client saw failures"
    );
    assert!(good.load(Ordering::Relaxed) > 10);
    // Still serving afterwards.
    let r = client::get(
        s.node.pod(s.pods.client),
        s.reviews(),
        &[("x-mse-tag", "gray")],
    )?;
    assert_eq!(r.endpoint(), "reviews-gray");
    Ok(())
}

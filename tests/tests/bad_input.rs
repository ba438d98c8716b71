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

/// The standard node with a 1 s header timeout and a `garbage` service whose
/// endpoint answers with something that is not HTTP.
fn node() -> Result<(Standard, Backend)> {
    let s = Standard::start_with(|sc| {
        sc.router_extra = "  header_timeout: 1s\n".into();
        let ratings = sc.services[1].endpoints[0].0;
        sc.services.push(ServiceSpec {
            name: "garbage".into(),
            vip: "10.96.0.13".parse().expect("ip"),
            vip6: None,
            port: 80,
            target_port: 9090,
            protocol: "http",
            policy: None,
            endpoints: vec![(ratings, None)],
        });
    })?;
    let garbage = Backend::raw(s.node.pod(s.pods.ratings), 9090, b"NOT HTTP AT ALL\r\n\r\n")?;
    Ok((s, garbage))
}

/// Sends `raw` on a fresh connection from the client pod; returns the status
/// of the answer (or 0 for a close without an answer).
fn status_of(s: &Standard, raw: &[u8]) -> Result<u16> {
    let mut conn = Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let _ = conn.send_raw(raw);
    Ok(conn.read_response().map(|r| r.status).unwrap_or(0))
}

#[test]
fn bad_requests_get_the_right_status_and_nobody_else_notices() -> Result<()> {
    let (s, _garbage) = node()?;
    // A well-behaved client all along.
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| -> Result<()> {
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
            ("malformed request line", b"GET\r\n\r\n", 400),
            ("invalid header bytes", b"GET / HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n", 400),
            ("header name with a space", b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
            ("obs-fold", b"GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n", 400),
            ("conflicting Content-Length", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400),
            ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("Transfer-Encoding not ending in chunked", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 400),
            ("huge chunk size", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 400),
        ];
        for (what, raw, want) in cases {
            assert_eq!(status_of(&s, raw)?, *want, "{what}");
        }
        // Over-long header section.
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(80 * 1024)
        );
        assert_eq!(status_of(&s, big.as_bytes())?, 431, "over-long head");

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

        // A reset in the middle of a head: nothing breaks.
        let reset = client::connect(s.node.pod(s.pods.client), s.reviews())?;
        (&reset).write_all(b"GET / HTTP/1.1\r\nho")?;
        client::reset_on_close(&reset)?;
        drop(reset);

        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
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

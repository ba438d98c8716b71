//! Load: 10,000 concurrent client connections held for a minute with steady
//! requests through the router, while for the whole minute a slowloris
//! client keeps 500 half-sent request heads open (reopening each one the
//! router times out) and a greedy client pipelines requests on several
//! connections as fast as it can. None of the steady requests fails or
//! starves, the agent's memory stays below the DaemonSet's limit, and it
//! gives most of it back once the connections close. `LANEWAY_LOAD_SECS`
//! shortens the minute for local runs.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use laneway_tests::{Pod, Standard, client::Conn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CONNECTIONS: usize = 10_000;
/// Slowloris connections open at any time.
const SLOWLORIS: usize = 500;
/// The greedy client's connections, and requests it pipelines on each.
const GREEDY_CONNECTIONS: usize = 4;
const GREEDY_PIPELINE: usize = 8;

/// The agent container's memory limit in `deploy/daemonset.yaml`, in KiB:
/// above it the kubelet kills the agent.
fn daemonset_memory_limit_kib() -> Result<u64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let ds: DaemonSet = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let limit = ds
        .spec
        .template
        .spec
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "agent"))
        .and_then(|c| c.resources)
        .and_then(|r| r.limits)
        .and_then(|l| l.get("memory").cloned())
        .context("no memory limit on the agent container")?;
    let text = limit.0;
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .with_context(|| format!("memory limit {text}"))?;
    Ok(match unit {
        "Ki" => number,
        "Mi" => number * 1024,
        "Gi" => number * 1024 * 1024,
        _ => bail!("memory limit {text}: expected Ki, Mi or Gi"),
    })
}

/// One request on a held connection; the answer's status.
async fn request(stream: &mut BufReader<tokio::net::TcpStream>) -> Result<u16> {
    stream
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-mse-tag: joint1\r\n\r\n")
        .await?;
    let mut status = 0;
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(stream.read_line(&mut line).await? > 0, "closed");
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        } else if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}

/// Keeps [`SLOWLORIS`] connections from `pod` sending a request head a byte
/// a second without ever finishing it, until `stop`. Each one the router
/// answers (408 at its header timeout) or closes is replaced at once, so
/// the pressure lasts the whole run. Returns the 408s received.
fn slowloris(pod: &Pod, vip: SocketAddr, stop: &AtomicBool) -> Result<u64> {
    pod.netns.run(|| -> Result<u64> {
        let open = || -> Result<TcpStream> {
            let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")?;
            c.set_nonblocking(true)?;
            Ok(c)
        };
        let mut conns = (0..SLOWLORIS).map(|_| open()).collect::<Result<Vec<_>>>()?;
        let mut timed_out = 0;
        while !stop.load(Ordering::Relaxed) {
            for c in &mut conns {
                let mut answer = [0u8; 64];
                let replace = match c.read(&mut answer) {
                    Ok(n) => {
                        timed_out += u64::from(answer[..n].starts_with(b"HTTP/1.1 408"));
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        c.write_all(b"a").is_err()
                    }
                    Err(_) => true,
                };
                if replace {
                    *c = open()?;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(timed_out)
    })?
}

/// A greedy client: one connection from `pod` that pipelines
/// [`GREEDY_PIPELINE`] requests at a time, as fast as the answers come,
/// until `stop`. Returns the requests answered 200; fails on anything else.
fn greedy(pod: &Pod, vip: SocketAddr, stop: &AtomicBool) -> Result<u64> {
    let mut conn = Conn::open(pod, vip)?;
    let batch = "GET / HTTP/1.1\r\nhost: reviews\r\n\r\n".repeat(GREEDY_PIPELINE);
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        conn.send_raw(batch.as_bytes())?;
        for _ in 0..GREEDY_PIPELINE {
            let r = conn.read_response()?;
            anyhow::ensure!(r.status == 200, "greedy request answered {}", r.status);
            answered += 1;
        }
    }
    Ok(answered)
}

#[test]
fn ten_thousand_connections_for_a_minute_drop_nothing() -> Result<()> {
    let secs: u64 = std::env::var("LANEWAY_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let limit_kib = daemonset_memory_limit_kib()?;
    // Clients that connect and wait before their first request: the port is
    // declared HTTP (appProtocol). On an `auto` port each would, after
    // `sniff_timeout`, also hold an upstream connection until its first
    // word (in case the server speaks first), and the test counts the
    // router's memory per client connection.
    let s = Standard::start_with(|sc| sc.services[0].protocol = "http")?;
    let vip = s.reviews();
    let pod = s.node.pod(s.pods.client);
    for _ in 0..20 {
        Conn::open(pod, vip)?.get("/", &[])?;
    }
    let rss_idle = s.agent.rss_kib();
    // Open them all from inside the pod (one thread in its netns).
    let streams: Vec<TcpStream> = pod.netns.run(move || -> Result<Vec<TcpStream>> {
        (0..CONNECTIONS)
            .map(|i| {
                TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .with_context(|| format!("connection {i}"))
            })
            .collect()
    })??;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (rss_early, rss_late, timed_out, greedy_requests) =
        std::thread::scope(|scope| -> Result<(u64, u64, u64, u64)> {
            let _stop_on_exit = laneway_tests::StopOnDrop(&stop);
            let slow = scope.spawn(|| slowloris(pod, vip, &stop));
            let greedy: Vec<_> = (0..GREEDY_CONNECTIONS)
                .map(|_| scope.spawn(|| greedy(pod, vip, &stop)))
                .collect();
            let rss = runtime.block_on(async {
                let mut tasks = Vec::new();
                for (i, stream) in streams.into_iter().enumerate() {
                    stream.set_nonblocking(true)?;
                    let mut stream = BufReader::new(tokio::net::TcpStream::from_std(stream)?);
                    let (ok, failed, slowest, stop) =
                        (ok.clone(), failed.clone(), slowest_ms.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        // Spread the requests: each connection asks every 5 s.
                        tokio::time::sleep(Duration::from_millis(
                            (i as u64 * 5000) / CONNECTIONS as u64,
                        ))
                        .await;
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            match tokio::time::timeout(
                                Duration::from_secs(10),
                                request(&mut stream),
                            )
                            .await
                            {
                                Ok(Ok(200)) => ok.fetch_add(1, Ordering::Relaxed),
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            };
                            slowest
                                .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }));
                }
                tokio::time::sleep(Duration::from_secs(secs / 3)).await;
                let rss_early = s.agent.rss_kib();
                tokio::time::sleep(Duration::from_secs(secs - secs / 3)).await;
                let rss_late = s.agent.rss_kib();
                stop.store(true, Ordering::Relaxed);
                // Each task drops (closes) its connection as it ends.
                for t in tasks {
                    let _ = t.await;
                }
                anyhow::Ok((rss_early, rss_late))
            });
            stop.store(true, Ordering::Relaxed);
            let timed_out = slow.join().expect("slowloris thread")?;
            let mut greedy_requests = 0;
            for g in greedy {
                greedy_requests += g.join().expect("greedy thread")?;
            }
            let (rss_early, rss_late) = rss?;
            Ok((rss_early, rss_late, timed_out, greedy_requests))
        })?;
    // Every client connection is closed now. The agent gives the freed heap
    // back within its 10 s check (`laneway::memory`): wait for at least half
    // of what the connections took to go.
    let given_back =
        |rss: u64| rss.saturating_sub(rss_idle) <= rss_late.saturating_sub(rss_idle) / 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rss_closed = s.agent.rss_kib();
    while !given_back(rss_closed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        rss_closed = s.agent.rss_kib();
    }
    // VmHWM is updated lazily, so it can lag a sample of VmRSS.
    let rss_peak = s.agent.peak_rss_kib().max(rss_late);
    eprintln!(
        "agent RSS KiB: idle {rss_idle}, early {rss_early}, late {rss_late}, closed {rss_closed}, \
         peak {rss_peak} (limit {limit_kib}); slowloris 408s {timed_out}; greedy {greedy_requests}"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} of {CONNECTIONS} held connections failed ({ok} requests answered)"
    );
    assert!(
        ok as usize >= CONNECTIONS * (secs as usize / 5).max(1) / 2,
        "steady requests ran: {ok}"
    );
    let slowest = slowest_ms.load(Ordering::Relaxed);
    assert!(
        slowest < 5_000,
        "a steady request waited {slowest} ms: starved"
    );
    // The header timeout is 10 s: over the run each slow connection is
    // timed out and reopened again and again.
    assert!(
        timed_out >= (SLOWLORIS as u64) * (secs / 20),
        "slowloris pressure lasted the run: {timed_out} 408s"
    );
    assert!(
        greedy_requests > 100 * GREEDY_CONNECTIONS as u64,
        "the greedy client ran: {greedy_requests}"
    );
    assert!(
        rss_peak < limit_kib,
        "agent peak RSS {rss_peak} KiB is over the DaemonSet's limit of {limit_kib} KiB"
    );
    assert!(
        given_back(rss_closed),
        "agent RSS stays at {rss_closed} KiB after the connections closed (idle {rss_idle}, \
         loaded {rss_late})"
    );
    assert!(
        rss_late <= rss_early + rss_early / 4 + 8 * 1024,
        "agent memory grows: {rss_early} -> {rss_late} KiB"
    );
    Ok(())
}

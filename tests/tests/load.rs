//! Load: 10,000 concurrent client connections held for a minute with steady
//! requests through the router, while a misbehaving client opens half-sent
//! requests and another blasts requests as fast as it can. None of the
//! steady requests fails, the agent's memory stays bounded, and nobody
//! starves. `LANEWAY_LOAD_SECS` shortens the minute for local runs.

use std::{
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use laneway_tests::{Standard, client::Conn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CONNECTIONS: usize = 10_000;

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
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

#[test]
fn ten_thousand_connections_for_a_minute_drop_nothing() -> Result<()> {
    let secs: u64 = std::env::var("LANEWAY_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Clients that connect and wait before their first request: the port is
    // declared HTTP (appProtocol), or sniffing would take them for a
    // server-first protocol after `sniff_timeout`.
    let s = Standard::start_with(|sc| sc.services[0].protocol = "http")?;
    let vip = s.reviews();
    let pod = s.node.pod(s.pods.client);
    // Open them all from inside the pod (one thread in its netns).
    let streams: Vec<TcpStream> = pod.netns.run(move || -> Result<Vec<TcpStream>> {
        (0..CONNECTIONS)
            .map(|i| {
                TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .with_context(|| format!("connection {i}"))
            })
            .collect()
    })??;
    let agent_pid = s.agent.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let greedy_stop = stop.clone();
    let (rss_early, rss_late) = std::thread::scope(|scope| -> Result<(u64, u64)> {
        // A greedy client, as fast as it can on one connection.
        let greedy = scope.spawn(move || -> u64 {
            let Ok(mut conn) = Conn::open(pod, vip) else {
                return 0;
            };
            let mut n = 0;
            while !greedy_stop.load(Ordering::Relaxed) {
                if conn.get("/", &[]).is_err() {
                    break;
                }
                n += 1;
            }
            n
        });
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
                        match tokio::time::timeout(Duration::from_secs(10), request(&mut stream))
                            .await
                        {
                            Ok(Ok(200)) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        };
                        slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }));
            }
            // A misbehaving client: 500 connections that never finish their head.
            let slowloris: Vec<TcpStream> =
                pod.netns.run(move || -> Result<Vec<TcpStream>> {
                    (0..500)
                        .map(|_| {
                            let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
                            std::io::Write::write_all(
                                &mut c,
                                b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ",
                            )?;
                            Ok(c)
                        })
                        .collect()
                })??;
            tokio::time::sleep(Duration::from_secs(secs / 3)).await;
            let rss_early = rss_kib(agent_pid);
            tokio::time::sleep(Duration::from_secs(secs - secs / 3)).await;
            let rss_late = rss_kib(agent_pid);
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
            drop(slowloris);
            anyhow::Ok((rss_early, rss_late))
        });
        stop.store(true, Ordering::Relaxed);
        let greedy_requests = greedy.join().unwrap_or(0);
        assert!(
            greedy_requests > 100,
            "the greedy client ran: {greedy_requests}"
        );
        rss
    })?;
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
    assert!(
        rss_late < 512 * 1024,
        "agent RSS {rss_late} KiB with {CONNECTIONS} connections"
    );
    assert!(
        rss_late <= rss_early + rss_early / 4 + 8 * 1024,
        "agent memory grows: {rss_early} -> {rss_late} KiB"
    );
    Ok(())
}

//! The L4 load (see [`super`]): `laneway-bench l4-load`, run inside the
//! client pod, prints a [`Report`] as JSON; [`run`] starts it there and
//! reads it back. One thread per connection: the protocol is blocking
//! request/response, and the thread count is the bench's `--connections`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{MESSAGE_LEN, Mode, hello};
use crate::{
    load::{Measured, Pace},
    topology::BenchNode,
};

/// Connections at the fixed rate, each with an equal share of it (as many
/// as oha uses at the fixed rate).
pub const RATE_CONNECTIONS: u32 = 16;

/// What `l4-load` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// Round trips, or whole MiB received.
    pub ok: u64,
    /// Round trips or MiB per second.
    pub per_second: f64,
    /// Round-trip latency percentiles in µs (none for bulk).
    pub percentiles_us: Option<[f64; 3]>,
}

/// Runs `laneway-bench l4-load` in the `client` pod against the `stream`
/// VIP and reads its report.
pub fn run(
    bench: &BenchNode,
    client: usize,
    mode: Mode,
    pace: Pace,
    duration: Duration,
) -> Result<Measured> {
    let pod = bench.node.pod(client);
    let mut cmd = pod
        .netns
        .command(&std::env::current_exe()?.to_string_lossy());
    cmd.args(["l4-load", "--target", &bench.l4_vip().to_string()])
        .arg("--mode")
        .arg(match mode {
            Mode::RoundTrip => "round-trip",
            Mode::Bulk => "bulk",
            Mode::Name => bail!("the name mode is no load"),
        })
        .arg("--seconds")
        .arg(duration.as_secs_f64().to_string());
    match pace {
        Pace::Flat { connections, .. } => {
            cmd.arg("--connections").arg(connections.to_string());
        }
        Pace::Rate { per_second } => {
            cmd.arg("--connections")
                .arg(RATE_CONNECTIONS.to_string())
                .arg("--rate")
                .arg(per_second.to_string());
        }
    }
    let out = cmd.output().context("run laneway-bench l4-load")?;
    if !out.status.success() {
        bail!(
            "l4-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Report = serde_json::from_slice(&out.stdout).context("parse l4-load's report")?;
    let [p50_us, p99_us, p999_us] = report.percentiles_us.unwrap_or([f64::NAN; 3]);
    Ok(Measured {
        ok: report.ok,
        per_second: report.per_second,
        p50_us,
        p99_us,
        p999_us,
    })
}

/// `l4-load`: `connections` connections to `target` for `seconds`, each
/// making round trips back to back (or one every `connections / rate`
/// seconds, latency counted from when it was due) or reading bulk data.
pub fn load(
    target: SocketAddr,
    mode: Mode,
    connections: u32,
    seconds: f64,
    rate: Option<u32>,
) -> Result<Report> {
    let duration = Duration::from_secs_f64(seconds);
    let interval = rate.map(|r| Duration::from_secs_f64(f64::from(connections) / f64::from(r)));
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            // Paced connections start spread over one interval.
            let offset = interval.map_or(Duration::ZERO, |t| t * i / connections);
            std::thread::spawn(move || match mode {
                Mode::Bulk => bulk(target, start + duration).map(|bytes| (bytes, Vec::new())),
                _ => round_trips(target, start + offset, start + duration, interval)
                    .map(|latencies| (latencies.len() as u64, latencies)),
            })
        })
        .collect();
    let (mut done, mut latencies) = (0u64, Vec::new());
    for (i, thread) in threads.into_iter().enumerate() {
        let (n, mut l) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("connection {i}: the thread panicked"))?
            .with_context(|| format!("connection {i}"))?;
        done += n;
        latencies.append(&mut l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(match mode {
        Mode::Bulk => {
            let mib = done as f64 / (1024.0 * 1024.0);
            Report {
                ok: mib as u64,
                per_second: mib / elapsed,
                percentiles_us: None,
            }
        }
        _ => Report {
            ok: done,
            per_second: done as f64 / elapsed,
            percentiles_us: Some(percentiles_us(&mut latencies)),
        },
    })
}

/// Round trips until `end`: back to back, or the k-th due at
/// `first + k * interval`. Each one's latency in ns.
fn round_trips(
    target: SocketAddr,
    first: Instant,
    end: Instant,
    interval: Option<Duration>,
) -> Result<Vec<u64>> {
    let mut conn = open(target, Mode::RoundTrip)?;
    let mut message = [b'm'; MESSAGE_LEN];
    let mut latencies = Vec::new();
    let mut due = first;
    loop {
        let sent = match interval {
            Some(interval) => {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let sent = due;
                due += interval;
                sent
            }
            None => Instant::now(),
        };
        if sent >= end {
            return Ok(latencies);
        }
        conn.write_all(&message)?;
        conn.read_exact(&mut message)
            .context("read the echoed message")?;
        latencies.push(sent.elapsed().as_nanos() as u64);
    }
}

/// Reads bulk data until `end`; the bytes read.
fn bulk(target: SocketAddr, end: Instant) -> Result<u64> {
    let mut conn = open(target, Mode::Bulk)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    while Instant::now() < end {
        match conn.read(&mut buf)? {
            0 => bail!("the endpoint closed the stream after {bytes} bytes"),
            n => bytes += n as u64,
        }
    }
    Ok(bytes)
}

fn open(target: SocketAddr, mode: Mode) -> Result<TcpStream> {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connect to {target}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(&hello(mode))?;
    Ok(conn)
}

/// p50, p99 and p99.9 of `latencies` (ns), in µs.
fn percentiles_us(latencies: &mut [u64]) -> [f64; 3] {
    latencies.sort_unstable();
    [0.5, 0.99, 0.999].map(|q| match latencies.len() {
        0 => f64::NAN,
        n => latencies[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_read_from_the_sorted_latencies() {
        let mut ns: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        assert_eq!(percentiles_us(&mut ns), [501.0, 991.0, 1000.0]);
        assert!(percentiles_us(&mut []).iter().all(|p| p.is_nan()));
    }

    #[test]
    fn round_trips_and_bulk_through_a_real_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        std::thread::spawn(move || super::super::backend::serve(addr, "e"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the backend listens");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rr = load(addr, Mode::RoundTrip, 2, 0.2, None).unwrap();
        assert!(rr.ok > 0 && rr.percentiles_us.is_some(), "{rr:?}");
        let paced = load(addr, Mode::RoundTrip, 2, 0.5, Some(100)).unwrap();
        assert!((40..=60).contains(&paced.ok), "100/s for 0.5 s: {paced:?}");
        let bulk = load(addr, Mode::Bulk, 1, 0.2, None).unwrap();
        assert!(bulk.ok > 0 && bulk.percentiles_us.is_none(), "{bulk:?}");
    }
}

//! The load: oha (a real HTTP load generator, built from crates.io by
//! `cargo xtask bench`) run inside the client pod, and a holder of idle
//! keep-alive connections.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use laneway_tests::client::connect;
use serde::Deserialize;

use crate::topology::{BenchNode, TAG};

/// One HTTP/1.1 workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    /// Keep connections open (else one connection per request).
    pub keep_alive: bool,
    /// Ask for the 16 KiB answer (else the few-byte one).
    pub large: bool,
}

impl Workload {
    /// All four.
    pub const ALL: [Workload; 4] = [
        Workload {
            keep_alive: true,
            large: false,
        },
        Workload {
            keep_alive: true,
            large: true,
        },
        Workload {
            keep_alive: false,
            large: false,
        },
        Workload {
            keep_alive: false,
            large: true,
        },
    ];

    /// Its name in the report.
    pub fn name(self) -> String {
        format!(
            "{}, {}",
            if self.keep_alive {
                "keep-alive"
            } else {
                "new connection"
            },
            if self.large { "16 KiB" } else { "small" }
        )
    }

    /// Its short name for `--workloads`.
    pub fn slug(self) -> &'static str {
        match (self.keep_alive, self.large) {
            (true, false) => "keepalive-small",
            (true, true) => "keepalive-16k",
            (false, false) => "newconn-small",
            (false, true) => "newconn-16k",
        }
    }

    fn path(self) -> &'static str {
        if self.large { "/large" } else { "/small" }
    }
}

/// How hard to push.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as `connections` concurrent connections go.
    Flat {
        /// Concurrent connections.
        connections: u32,
    },
    /// A fixed rate, corrected for coordinated omission.
    Rate {
        /// Requests per second.
        per_second: u32,
    },
}

/// What one oha run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Requests answered with a 200.
    pub ok: u64,
    /// Requests per second.
    pub per_second: f64,
    /// Latency percentiles, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

/// The part of oha's JSON output used here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OhaReport {
    summary: OhaSummary,
    latency_percentiles: std::collections::BTreeMap<String, Option<f64>>,
    status_code_distribution: std::collections::BTreeMap<String, u64>,
    error_distribution: std::collections::BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OhaSummary {
    requests_per_sec: f64,
}

/// The oha binary: `LANEWAY_OHA`, else `oha` on `PATH`.
fn oha() -> PathBuf {
    std::env::var_os("LANEWAY_OHA")
        .map(PathBuf::from)
        .unwrap_or_else(|| "oha".into())
}

/// Runs `workload` at `pace` for `duration` from the `client` pod to the
/// VIP, every request with the tag header. Fails if any request failed.
pub fn run(
    bench: &BenchNode,
    client: usize,
    workload: Workload,
    pace: Pace,
    duration: Duration,
) -> Result<Measured> {
    let pod = bench.node.pod(client);
    let mut cmd = pod.netns.command(&oha().to_string_lossy());
    cmd.args(["--no-tui", "--output-format", "json", "-w"])
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-H")
        .arg(format!("x-mse-tag: {TAG}"));
    match pace {
        Pace::Flat { connections } => {
            cmd.arg("-c").arg(connections.to_string());
        }
        Pace::Rate { per_second } => {
            cmd.args(["-c", "16", "--latency-correction", "-q"])
                .arg(per_second.to_string());
        }
    }
    if !workload.keep_alive {
        cmd.arg("--disable-keepalive");
    }
    cmd.arg(format!("http://{}{}", bench.vip(), workload.path()));
    let out = cmd
        .output()
        .context("run oha (`cargo xtask bench` builds it)")?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: OhaReport =
        serde_json::from_slice(&out.stdout).context("parse oha's JSON output")?;
    let ok = report
        .status_code_distribution
        .get("200")
        .copied()
        .unwrap_or(0);
    let failed: u64 = report
        .status_code_distribution
        .iter()
        .filter(|(code, _)| *code != "200")
        .map(|(_, n)| n)
        .sum::<u64>()
        + report.error_distribution.values().sum::<u64>();
    if failed > 0 || ok == 0 {
        bail!(
            "{} of {} requests failed: {:?} {:?}",
            failed,
            failed + ok,
            report.status_code_distribution,
            report.error_distribution
        );
    }
    let percentile = |key: &str| {
        report
            .latency_percentiles
            .get(key)
            .copied()
            .flatten()
            .unwrap_or(f64::NAN)
            * 1e6
    };
    Ok(Measured {
        ok,
        per_second: report.summary.requests_per_sec,
        p50_us: percentile("p50"),
        p99_us: percentile("p99"),
        p999_us: percentile("p99.9"),
    })
}

/// Opens `count` connections from the `client` pod to the VIP, sends one
/// tagged request on each (so the proxy holds its state for a live
/// keep-alive connection) and keeps them open, idle, until dropped. One
/// file descriptor each: the open-files limit may not be much above `count`.
pub fn idle_connections(bench: &BenchNode, client: usize, count: usize) -> Result<Vec<TcpStream>> {
    let pod = bench.node.pod(client);
    let request = format!(
        "GET /small HTTP/1.1\r\nhost: {}\r\nx-mse-tag: {TAG}\r\n\r\n",
        bench.vip()
    );
    let mut conns = Vec::with_capacity(count);
    let mut buf = [0u8; 4096];
    for i in 0..count {
        let mut conn =
            connect(pod, bench.vip()).with_context(|| format!("idle connection {i} of {count}"))?;
        conn.write_all(request.as_bytes())?;
        // The small answer arrives in one segment: a head and a few bytes.
        let n = conn.read(&mut buf)?;
        if !buf[..n].starts_with(b"HTTP/1.1 200") {
            bail!(
                "idle connection {i}: {:?}",
                String::from_utf8_lossy(&buf[..n.min(200)])
            );
        }
        conns.push(conn);
    }
    Ok(conns)
}

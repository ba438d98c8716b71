//! HTTP/1.1 load: oha (built from crates.io by `cargo xtask bench`) run
//! inside the client pod, its JSON report read back.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{Measured, Pace};
use crate::topology::{BenchNode, TAG};

/// The part of oha's JSON output used here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OhaReport {
    summary: OhaSummary,
    latency_percentiles: BTreeMap<String, Option<f64>>,
    status_code_distribution: BTreeMap<String, u64>,
    error_distribution: BTreeMap<String, u64>,
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

/// `GET /small` (or `/large`), on keep-alive connections or one per
/// request; the fixed rate is corrected for coordinated omission.
pub(super) fn run(
    bench: &BenchNode,
    client: usize,
    keep_alive: bool,
    large: bool,
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
        Pace::Flat { connections, .. } => {
            cmd.arg("-c").arg(connections.to_string());
        }
        Pace::Rate { per_second } => {
            cmd.args(["-c", "16", "--latency-correction", "-q"])
                .arg(per_second.to_string());
        }
    }
    if !keep_alive {
        cmd.arg("--disable-keepalive");
    }
    let path = if large { "/large" } else { "/small" };
    cmd.arg(format!("http://{}{path}", bench.vip()));
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

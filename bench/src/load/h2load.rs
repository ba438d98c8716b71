//! HTTP/2 and gRPC load: h2load (Debian's `nghttp2-client`) run inside the
//! client pod over h2c (prior knowledge). Its summary gives the rate and the
//! outcome of every stream; latency percentiles come from its per-request
//! log, which it writes only for the fixed-rate runs.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use super::{Measured, Pace};
use crate::{
    h2::{GRPC_CONTENT_TYPE, GRPC_PATH, SMALL_PATH, grpc_request},
    topology::{BenchNode, TAG},
};

/// Connections at the fixed rate, each with an equal share of it, one
/// request at a time. h2load sends a connection's requests in a batch every
/// 10 ms, so each connection makes one request per batch and they start
/// 1 ms apart: requests go out evenly, one a millisecond at 1000/s.
pub const RATE_CONNECTIONS: u32 = 10;

/// What every stream asks.
#[derive(Clone, Copy, Debug)]
pub(super) enum Call {
    /// `GET /small`.
    Small,
    /// The unary gRPC echo, posting [`grpc_request`].
    Grpc,
}

/// Runs h2load from the `client` pod to the `echo` VIP. Fails if any stream
/// failed, was not a 200, or (gRPC) came back without its echoed message.
pub(super) fn run(
    bench: &BenchNode,
    client: usize,
    call: Call,
    pace: Pace,
    duration: Duration,
) -> Result<Measured> {
    let pod = bench.node.pod(client);
    let scratch = bench.node.dir();
    let log = scratch.join(format!("h2load-{}.log", pod.name));
    let _ = std::fs::remove_file(&log);
    let mut cmd = pod.netns.command("h2load");
    cmd.args(["-t", "1", "-H", &format!("x-mse-tag: {TAG}")]);
    match pace {
        Pace::Flat {
            connections,
            streams,
        } => {
            cmd.arg("-D").arg(format!("{}ms", duration.as_millis()));
            cmd.arg("-c").arg(connections.to_string());
            cmd.arg("-m").arg(streams.to_string());
        }
        Pace::Rate { per_second } => {
            // h2load cannot pace connections and run for a time at once: as
            // many requests as the time holds.
            let per_connection = per_second.div_ceil(RATE_CONNECTIONS);
            let requests = (f64::from(per_connection * RATE_CONNECTIONS) * duration.as_secs_f64())
                .ceil() as u64;
            cmd.arg("-c").arg(RATE_CONNECTIONS.to_string());
            cmd.args(["-r", "1", "--rate-period", "1ms"]);
            cmd.arg("--rps").arg(per_connection.to_string());
            cmd.arg("-n").arg(requests.to_string());
            cmd.arg("--log-file").arg(&log);
        }
    }
    let path = match call {
        Call::Small => SMALL_PATH,
        Call::Grpc => {
            let body = scratch.join("grpc-request.bin");
            std::fs::write(&body, grpc_request())?;
            cmd.arg("-d").arg(&body);
            cmd.args(["-H", &format!("content-type: {GRPC_CONTENT_TYPE}")]);
            cmd.args(["-H", "te: trailers"]);
            GRPC_PATH
        }
    };
    cmd.arg(format!("http://{}{path}", bench.h2_vip()));
    let out = cmd
        .output()
        .context("run h2load (`cargo xtask setup` installs nghttp2-client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary = Summary::parse(&stdout).with_context(|| format!("h2load's output:\n{stdout}"))?;
    summary
        .check(call)
        .with_context(|| format!("h2load's output:\n{stdout}"))?;
    let mut measured = Measured {
        ok: summary.succeeded,
        per_second: summary.per_second,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        p999_us: f64::NAN,
    };
    if matches!(pace, Pace::Rate { .. }) {
        let mut latencies = read_log(&log)?;
        latencies.sort_unstable();
        let at = |q: f64| percentile(&latencies, q);
        (measured.p50_us, measured.p99_us, measured.p999_us) = (at(0.5), at(0.99), at(0.999));
    }
    Ok(measured)
}

/// The figures of h2load's summary used here.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    /// Streams per second.
    per_second: f64,
    /// Streams done (closed, with an answer or not).
    done: u64,
    /// Streams closed normally.
    succeeded: u64,
    /// Streams failed, errored or timed out.
    failed: u64,
    /// Answers with a status other than 2xx.
    not_2xx: u64,
    /// Bytes of DATA frames received.
    data_bytes: u64,
}

impl Summary {
    /// Reads h2load's text summary, e.g.
    ///
    /// ```text
    /// finished in 1.00s, 52719.00 req/s, 2.21MB/s
    /// requests: 52719 total, 52879 started, 52719 done, 52719 succeeded, 0 failed, 0 errored, 0 timeout
    /// status codes: 52719 2xx, 0 3xx, 0 4xx, 0 5xx
    /// traffic: 2.21MB (2319236) total, 412.55KB (422453) headers (space savings 95.31%), 753.08KB (771162) data
    /// ```
    fn parse(out: &str) -> Result<Self> {
        let line = |prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .with_context(|| format!("no line {prefix:?}"))
        };
        // "N word" pairs of a comma-separated line, by word.
        let count = |fields: &str, word: &str| -> Result<u64> {
            fields
                .split(',')
                .find_map(|f| {
                    let (n, w) = f.trim().split_once(' ')?;
                    (w == word).then(|| n.parse().ok()).flatten()
                })
                .with_context(|| format!("no {word:?} in {fields:?}"))
        };
        let finished = line("finished in ")?;
        let per_second = finished
            .split(',')
            .find_map(|f| f.trim().strip_suffix(" req/s"))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no req/s in {finished:?}"))?;
        let requests = line("requests: ")?;
        let statuses = line("status codes: ")?;
        // "... (771162) data": the exact byte count is in the parentheses.
        let traffic = line("traffic: ")?;
        let data_bytes = traffic
            .split(',')
            .find(|f| f.trim_end().ends_with(" data"))
            .and_then(|f| f.split_once('(')?.1.split_once(')')?.0.parse().ok())
            .with_context(|| format!("no data bytes in {traffic:?}"))?;
        Ok(Self {
            per_second,
            done: count(requests, "done")?,
            succeeded: count(requests, "succeeded")?,
            failed: count(requests, "failed")?
                + count(requests, "errored")?
                + count(requests, "timeout")?,
            not_2xx: count(statuses, "3xx")? + count(statuses, "4xx")? + count(statuses, "5xx")?,
            data_bytes,
        })
    }

    /// Fails unless every stream succeeded with a 2xx and, for gRPC, every
    /// answer carried its message: h2load looks at the HTTP status only,
    /// and a gRPC error (e.g. laneway's `UNAVAILABLE`) is a 200 with no
    /// message. Streams still open when the time is up are neither (but
    /// their status may be counted already).
    fn check(&self, call: Call) -> Result<()> {
        if self.succeeded == 0 || self.failed > 0 || self.not_2xx > 0 {
            bail!(
                "{} of {} streams failed, {} answered with a status other than 2xx",
                self.failed,
                self.done,
                self.not_2xx
            );
        }
        let echoed = grpc_request().len() as u64 * self.succeeded;
        if matches!(call, Call::Grpc) && self.data_bytes < echoed {
            bail!(
                "{} bytes of gRPC messages came back, not the {echoed} of {} echoes",
                self.data_bytes,
                self.succeeded
            );
        }
        Ok(())
    }
}

/// The latencies in h2load's `--log-file`, in microseconds (its third
/// tab-separated column, the time from request to end of response).
fn read_log(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|us| us.parse().ok())
                .with_context(|| format!("h2load log line {l:?}"))
        })
        .collect()
}

/// The `q` quantile of `sorted` (nearest rank), or NaN if it is empty.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "finished in 1.00s, 52719.00 req/s, 2.21MB/s\n\
        requests: 52719 total, 52879 started, 52719 done, 52719 succeeded, 0 failed, 0 errored, 0 timeout\n\
        status codes: 52719 2xx, 0 3xx, 0 4xx, 0 5xx\n\
        traffic: 2.21MB (2319236) total, 412.55KB (422453) headers (space savings 95.31%), 753.08KB (2056041) data\n";

    #[test]
    fn summary_is_read_and_checked() {
        let summary = Summary::parse(OUT).unwrap();
        assert_eq!(
            summary,
            Summary {
                per_second: 52719.0,
                done: 52719,
                succeeded: 52719,
                failed: 0,
                not_2xx: 0,
                data_bytes: 2056041,
            }
        );
        summary.check(Call::Small).unwrap();
        // 39-byte echoes: 2056041 bytes is exactly 52719 of them.
        summary.check(Call::Grpc).unwrap();
        let short = Summary {
            data_bytes: 2056040,
            ..summary
        };
        assert!(short.check(Call::Grpc).is_err());
        assert!(short.check(Call::Small).is_ok());
        let not_found =
            Summary::parse(&OUT.replace("52719 2xx, 0 3xx, 0 4xx", "0 2xx, 0 3xx, 52719 4xx"))
                .unwrap();
        assert!(not_found.check(Call::Small).is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 500.0);
        assert_eq!(percentile(&sorted, 0.99), 990.0);
        assert_eq!(percentile(&sorted, 0.999), 999.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}

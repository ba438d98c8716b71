//! The report: medians over the repeats, ratios to the direct path and to
//! HAProxy, the targets, as Markdown (`target/bench/report.md`, and
//! `BENCHMARKS.md` for a full run) and an SVG chart of throughput.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    load::{H2_RATE_CONNECTIONS, Protocol, Workload},
    proxy::Config,
};

/// One repeat of one workload through one configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Requests per second at full speed.
    pub per_second: f64,
    /// The proxy's CPU seconds per 1000 requests at full speed.
    pub cpu_per_1000: Option<f64>,
    /// The 99th latency percentile at full speed (saturation), in
    /// microseconds (NaN where the load generator gives none).
    pub saturated_p99_us: f64,
    /// Latency percentiles at the fixed rate, in microseconds.
    pub p50_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
}

/// One repeat's memory for one configuration, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Peak RSS over all the workloads.
    pub peak_kib: u64,
    /// RSS with the idle connections open.
    pub idle_kib: u64,
    /// How many idle connections it held (HAProxy's `maxconn` may be
    /// below the number asked for).
    pub held: usize,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    /// Samples by configuration and workload, one per repeat.
    pub samples: BTreeMap<(Config, Workload), Vec<Sample>>,
    /// Memory by configuration, one per repeat.
    pub memory: BTreeMap<Config, Vec<Memory>>,
}

/// How the run was made, for the report's header.
#[derive(Debug)]
pub struct Method {
    /// The command that made it.
    pub command: String,
    /// Repeats of each configuration.
    pub repeats: usize,
    /// Seconds of each full-speed and each fixed-rate run.
    pub seconds: f64,
    /// Concurrent connections at full speed.
    pub connections: u32,
    /// Concurrent streams per HTTP/2 connection at full speed.
    pub streams: u32,
    /// The fixed rate, in requests per second.
    pub rate: u32,
    /// Idle connections held for the memory figure.
    pub idle: usize,
    /// The machine: kernel, CPU, cores.
    pub machine: String,
    /// Its load averages at the start and the end of the run.
    pub load: String,
    /// When (UTC).
    pub date: String,
}

/// The targets (issue 16, and issue 14's for HTTP/2), checked against
/// laneway socket mode: relative to HAProxy on every workload, plus these.
/// Added p99 over direct at the fixed rate, HTTP/1.1 and L4.
const TARGET_P99_ADDED_US: f64 = 100.0;
/// The same for HTTP/2 and gRPC.
const TARGET_H2_P99_ADDED_US: f64 = 200.0;
/// TC mode's throughput at least this share of socket mode's.
const TARGET_TC_SHARE: f64 = 0.9;
/// RSS with the idle connections open, MiB: no higher than when the
/// targets were set.
const TARGET_IDLE_MIB: f64 = 38.0;

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians of one configuration on one workload.
#[derive(Clone, Copy, Debug)]
struct Row {
    per_second: f64,
    cpu_per_1000: f64,
    saturated_p99_us: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

impl Results {
    fn row(&self, config: Config, workload: Workload) -> Option<Row> {
        let samples = self.samples.get(&(config, workload))?;
        let of = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        Some(Row {
            per_second: of(|s| s.per_second),
            cpu_per_1000: of(|s| s.cpu_per_1000.unwrap_or(f64::NAN)),
            saturated_p99_us: of(|s| s.saturated_p99_us),
            p50_us: of(|s| s.p50_us),
            p99_us: of(|s| s.p99_us),
            p999_us: of(|s| s.p999_us),
        })
    }

    /// Median peak and idle RSS in MiB, and the fewest idle connections held.
    fn memory_mib(&self, config: Config) -> Option<(f64, f64, usize)> {
        let m = self.memory.get(&config)?;
        Some((
            median(m.iter().map(|m| m.peak_kib as f64 / 1024.0).collect()),
            median(m.iter().map(|m| m.idle_kib as f64 / 1024.0).collect()),
            m.iter().map(|m| m.held).min()?,
        ))
    }

    fn workloads(&self) -> Vec<Workload> {
        let mut w: Vec<Workload> = self.samples.keys().map(|(_, w)| *w).collect();
        w.sort_by_key(|w| Workload::ALL.iter().position(|a| a == w));
        w.dedup();
        w
    }

    fn configs(&self) -> Vec<Config> {
        let mut c: Vec<Config> = self.samples.keys().map(|(c, _)| *c).collect();
        c.sort();
        c.dedup();
        c
    }

    /// The Markdown report.
    pub fn markdown(&self, method: &Method) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Measured {} on {} (load averages over 1, 5 and 15 minutes: {}).\n\n`{}`: {} repeat(s) of every configuration, interleaved \
             (the order rotates each repeat); each figure is the median over the repeats. \
             Full speed: {} s with {} concurrent connections ({} concurrent streams on each \
             HTTP/2 connection). Fixed rate: {} s at {} requests/s (HTTP/1.1: oha, latency \
             corrected for coordinated omission; HTTP/2: h2load, {H2_RATE_CONNECTIONS} \
             connections started 1 ms apart, one stream at a time on each). \
             Memory: peak RSS over all workloads, and RSS with {} idle HTTP/1.1 keep-alive \
             connections open.\n",
            method.date,
            method.machine,
            method.load,
            method.command,
            method.repeats,
            method.seconds,
            method.connections,
            method.streams,
            method.seconds,
            method.rate,
            method.idle,
        );
        let fmt = |v: f64, digits: usize| {
            if v.is_finite() {
                format!("{v:.digits$}")
            } else {
                "–".into()
            }
        };
        for workload in self.workloads() {
            let _ = writeln!(md, "### {}\n", workload.name());
            let _ = writeln!(
                md,
                "| configuration | {unit}/s | × direct | × HAProxy | p99 at full speed µs | p50 µs | p99 µs | p99.9 µs | \
                 p99 added over direct µs | CPU s / 1000 {unit} | CPU × HAProxy |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                unit = workload.unit()
            );
            let direct = self.row(Config::Direct, workload);
            let haproxy = self.row(Config::Haproxy, workload);
            for config in self.configs() {
                let Some(row) = self.row(config, workload) else {
                    continue;
                };
                let ratio = |base: Option<Row>, f: fn(&Row) -> f64| {
                    base.map_or(f64::NAN, |b| f(&row) / f(&b))
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    config.name(),
                    fmt(row.per_second, 0),
                    fmt(ratio(direct, |r| r.per_second), 2),
                    fmt(ratio(haproxy, |r| r.per_second), 2),
                    fmt(row.saturated_p99_us, 0),
                    fmt(row.p50_us, 0),
                    fmt(row.p99_us, 0),
                    fmt(row.p999_us, 0),
                    fmt(direct.map_or(f64::NAN, |d| row.p99_us - d.p99_us), 0),
                    fmt(row.cpu_per_1000, 4),
                    fmt(ratio(haproxy, |r| r.cpu_per_1000), 2),
                );
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "### Memory\n\n| configuration | peak RSS MiB | RSS with idle connections MiB | idle connections held |\n|---|---:|---:|---:|"
        );
        for config in self.configs() {
            if let Some((peak, idle, held)) = self.memory_mib(config) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {held} |",
                    config.name(),
                    fmt(peak, 1),
                    fmt(idle, 1)
                );
            }
        }
        md.push('\n');
        md.push_str(&self.targets(method));
        md
    }

    /// The targets, against laneway socket mode (the default): one row per
    /// workload, a column per target, each cell its verdict and the figure
    /// it was judged on.
    fn targets(&self, method: &Method) -> String {
        let ours = Config::LanewaySocket;
        let mut md = format!(
            "### Targets (laneway socket mode)\n\n\
             | workload | throughput ≥ HAProxy | router CPU ≤ HAProxy's | p99 at full speed ≤ HAProxy's | \
             p99 added over direct < {TARGET_P99_ADDED_US} µs (HTTP/2: {TARGET_H2_P99_ADDED_US} µs) | \
             TC ≥ {TARGET_TC_SHARE}× socket |\n|---|---|---|---|---|---|\n"
        );
        for workload in self.workloads() {
            let (Some(row), Some(h), Some(d)) = (
                self.row(ours, workload),
                self.row(Config::Haproxy, workload),
                self.row(Config::Direct, workload),
            ) else {
                continue;
            };
            let p99_target = match workload.protocol() {
                Protocol::Http2 => TARGET_H2_P99_ADDED_US,
                Protocol::Http1 | Protocol::L4 => TARGET_P99_ADDED_US,
            };
            let added = row.p99_us - d.p99_us;
            let tc = self.row(Config::LanewayTc, workload);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                workload.name(),
                verdict(row.per_second / h.per_second, |r| r >= 1.0, "×", 2),
                verdict(row.cpu_per_1000 / h.cpu_per_1000, |r| r <= 1.0, "×", 2),
                verdict(
                    row.saturated_p99_us / h.saturated_p99_us,
                    |r| r <= 1.0,
                    "×",
                    2
                ),
                verdict(added, |a| a < p99_target, " µs", 0),
                verdict(
                    tc.map_or(f64::NAN, |t| t.per_second / row.per_second),
                    |r| r >= TARGET_TC_SHARE,
                    "×",
                    2
                ),
            );
        }
        if let Some((_, idle, held)) = self.memory_mib(ours) {
            let _ = writeln!(
                md,
                "\nRSS ≤ {TARGET_IDLE_MIB} MiB with {} idle connections: {idle:.1} MiB with {held}, {}.",
                method.idle,
                if idle <= TARGET_IDLE_MIB && held >= method.idle {
                    "met"
                } else {
                    "**missed**"
                }
            );
        }
        md
    }

    /// A grouped bar chart: throughput per workload, one bar per
    /// configuration, as a ratio to the direct path.
    pub fn svg(&self) -> String {
        let workloads = self.workloads();
        let configs = self.configs();
        const COLOURS: [&str; 6] = [
            "#7f7f7f", "#1f77b4", "#2ca02c", "#17becf", "#d62728", "#ff7f0e",
        ];
        let (width, height, top, bottom, left) = (960.0, 420.0, 40.0, 90.0, 60.0);
        let plot_h = height - top - bottom;
        let group_w = (width - left - 20.0) / workloads.len().max(1) as f64;
        let bar_w = group_w * 0.8 / configs.len().max(1) as f64;
        let ratio = |c: Config, w: Workload| match (self.row(c, w), self.row(Config::Direct, w)) {
            (Some(r), Some(d)) if d.per_second > 0.0 => r.per_second / d.per_second,
            _ => 0.0,
        };
        let max = workloads
            .iter()
            .flat_map(|w| configs.iter().map(|c| ratio(*c, *w)))
            .fold(1.0f64, f64::max)
            .max(0.1)
            * 1.1;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"24\" font-size=\"15\">Throughput relative to the direct path (higher is better)</text>\n"
        );
        for tick in 0..=4 {
            let v = max * tick as f64 / 4.0;
            let y = top + plot_h - plot_h * v / max;
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}×</text>",
                width - 20.0,
                left - 6.0,
                y + 4.0
            );
        }
        for (wi, w) in workloads.iter().enumerate() {
            let x0 = left + group_w * wi as f64 + group_w * 0.1;
            for (ci, c) in configs.iter().enumerate() {
                let v = ratio(*c, *w);
                let h = plot_h * v / max;
                let x = x0 + bar_w * ci as f64;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\">\
                     <title>{}: {v:.2}×</title></rect>",
                    top + plot_h - h,
                    bar_w - 2.0,
                    COLOURS[Config::ALL.iter().position(|a| a == c).unwrap_or(0) % COLOURS.len()],
                    c.name()
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + group_w * 0.4,
                top + plot_h + 18.0,
                w.name()
            );
        }
        for (ci, c) in configs.iter().enumerate() {
            let x = left + 150.0 * (ci % 6) as f64;
            let y = height - 30.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"{y}\">{}</text>",
                y - 10.0,
                COLOURS[Config::ALL.iter().position(|a| a == c).unwrap_or(0) % COLOURS.len()],
                x + 16.0,
                c.name()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A target's cell: "yes" or "**no**" by `met`, then the figure; "–" when
/// it was not measured (a load generator without that percentile, a
/// configuration not run).
fn verdict(value: f64, met: impl Fn(f64) -> bool, unit: &str, digits: usize) -> String {
    match value.is_finite() {
        true if met(value) => format!("yes ({value:.digits$}{unit})"),
        true => format!("**no** ({value:.digits$}{unit})"),
        false => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(per_second: f64, p99_us: f64) -> Sample {
        Sample {
            per_second,
            cpu_per_1000: Some(0.01),
            saturated_p99_us: 4.0 * p99_us,
            p50_us: 50.0,
            p99_us,
            p999_us: 2.0 * p99_us,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![f64::NAN]).is_nan());
    }

    fn method() -> Method {
        Method {
            command: "cargo xtask bench".into(),
            repeats: 2,
            seconds: 1.0,
            connections: 16,
            streams: 10,
            rate: 1000,
            idle: 100,
            machine: "test".into(),
            load: "0.1 0.1 0.1 at the start, 0.1 0.1 0.1 at the end".into(),
            date: "today".into(),
        }
    }

    #[test]
    fn report_gives_ratios_and_targets() {
        let w = Workload::ALL[0];
        let mut r = Results::default();
        r.samples.insert(
            (Config::Direct, w),
            vec![sample(1000.0, 100.0), sample(1200.0, 100.0)],
        );
        r.samples
            .insert((Config::LanewaySocket, w), vec![sample(500.0, 150.0)]);
        r.samples
            .insert((Config::Haproxy, w), vec![sample(400.0, 300.0)]);
        r.memory.insert(
            Config::LanewaySocket,
            vec![Memory {
                peak_kib: 10240,
                idle_kib: 20480,
                held: 100,
            }],
        );
        let md = r.markdown(&method());
        // 500 / median(1000, 1200) and 500 / 400.
        assert!(
            md.contains("| laneway socket | 500 | 0.45 | 1.25 | 600 | 50 | 150 | 300 | 50 |"),
            "{md}"
        );
        // No TC row: not judged.
        assert!(
            md.contains(
                "| keep-alive, small | yes (1.25×) | yes (1.00×) | yes (0.50×) | yes (50 µs) | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains("RSS ≤ 38 MiB with 100 idle connections: 20.0 MiB with 100, met."),
            "{md}"
        );
        let svg = r.svg();
        assert!(
            svg.starts_with("<svg") && svg.contains("laneway socket: 0.45×"),
            "{svg}"
        );
    }

    #[test]
    fn http2_targets_are_relative_to_haproxy_and_tc_to_socket() {
        let w = Workload::Http2Small;
        let mut r = Results::default();
        r.samples
            .insert((Config::Direct, w), vec![sample(1000.0, 100.0)]);
        r.samples
            .insert((Config::Haproxy, w), vec![sample(400.0, 300.0)]);
        r.samples.insert(
            (Config::LanewaySocket, w),
            vec![Sample {
                cpu_per_1000: Some(0.02),
                ..sample(500.0, 250.0)
            }],
        );
        r.samples
            .insert((Config::LanewayTc, w), vec![sample(400.0, 250.0)]);
        let md = r.markdown(&method());
        assert!(
            md.contains("| configuration | streams/s | × direct |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| h2c, small | yes (1.25×) | **no** (2.00×) | yes (0.83×) | yes (150 µs) | **no** (0.80×) |"
            ),
            "{md}"
        );
    }

    #[test]
    fn a_workload_without_a_fixed_rate_is_not_judged_on_latency() {
        let w = Workload::L4Bulk;
        let mut r = Results::default();
        let bulk = |per_second| Sample {
            per_second,
            cpu_per_1000: Some(0.01),
            saturated_p99_us: f64::NAN,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            p999_us: f64::NAN,
        };
        r.samples.insert((Config::Direct, w), vec![bulk(3000.0)]);
        r.samples.insert((Config::Haproxy, w), vec![bulk(1000.0)]);
        r.samples
            .insert((Config::LanewaySocket, w), vec![bulk(1500.0)]);
        let md = r.markdown(&method());
        assert!(
            md.contains("| configuration | MiB/s |")
                && md.contains("| L4 bulk download | yes (1.50×) | yes (1.00×) | – | – | – |"),
            "{md}"
        );
    }
}

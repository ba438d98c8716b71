//! `cargo xtask bench`: laneway against the direct path and the proxies
//! users would pick instead, on a node made of network namespaces.
//!
//! The same workloads (HTTP/1.1 keep-alive and a new connection per request,
//! small and 16 KiB answers; HTTP/2 small answers and gRPC unary calls, many
//! streams per connection; every request tagged) go through each
//! configuration of [`proxy::Config`]; oha (HTTP/1.1) and h2load (HTTP/2)
//! drive them at full speed and at a fixed rate; the proxy's CPU time and
//! memory are read from `/proc`. Every
//! configuration runs `--repeats` times, interleaved, and the report gives
//! medians and ratios to the direct path and to HAProxy.

mod h2;
mod l4;
mod load;
mod procstat;
mod proxy;
mod report;
mod topology;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::{
    load::{Pace, Workload},
    proxy::Config,
    report::{Memory, Method, Results, Sample},
    topology::BenchNode,
};

/// Benchmarks laneway against the direct path, its own router behind
/// iptables REDIRECT, HAProxy and nginx. Needs root (network namespaces, BPF).
#[derive(Parser)]
#[command(name = "laneway-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    part: Option<Part>,
    #[command(flatten)]
    args: Args,
}

/// The pieces of the benchmark that run as their own processes.
#[derive(Subcommand)]
enum Part {
    /// The HTTP/2 and gRPC endpoint the benchmark starts in each endpoint
    /// pod (see `h2::backend`).
    #[command(hide = true)]
    H2Backend {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
        /// Its name, answered in `x-endpoint`.
        #[arg(long)]
        name: String,
    },
    /// The L4 endpoint the benchmark starts in each endpoint pod (see
    /// `l4::backend`).
    #[command(hide = true)]
    L4Backend {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
        /// Its name, answered in the name mode.
        #[arg(long)]
        name: String,
    },
    /// The L4 load, run inside the client pod; prints its report as JSON
    /// (see `l4::client`).
    #[command(hide = true)]
    L4Load {
        /// The `stream` VIP.
        #[arg(long)]
        target: SocketAddr,
        /// Round trips or bulk.
        #[arg(long, value_enum)]
        mode: l4::Mode,
        /// Concurrent connections.
        #[arg(long)]
        connections: u32,
        /// How long.
        #[arg(long)]
        seconds: f64,
        /// Round trips per second over all connections (default: as fast
        /// as they go).
        #[arg(long)]
        rate: Option<u32>,
    },
}

/// The benchmark's options.
#[derive(clap::Args)]
struct Args {
    /// A short run that checks the harness works end to end (CI): 1 repeat,
    /// 1 s runs, 500 idle connections. Its numbers are not worth keeping.
    #[arg(long)]
    smoke: bool,
    /// Repeats of every configuration (interleaved).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds of each full-speed and each fixed-rate run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent connections at full speed.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Concurrent streams per connection at full speed (HTTP/2 and gRPC).
    #[arg(long, default_value_t = 10)]
    streams: u32,
    /// The fixed rate for the latency figures, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Idle keep-alive connections held for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Where the report and chart go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also write the report into this BENCHMARKS.md.
    #[arg(long)]
    benchmarks: Option<PathBuf>,
    /// Only these configurations (comma-separated: socket, tc, redirect,
    /// nginx; direct and HAProxy always run, as the baselines).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these workloads (comma-separated): keepalive-small,
    /// keepalive-16k, newconn-small, newconn-16k, keepalive-256conn,
    /// keepalive-1conn, h2-small, grpc-unary, l4-rr, l4-bulk.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Keep each configuration running this many seconds before its load
    /// (time to attach `perf record -p PID`, which is printed).
    #[arg(long, default_value_t = 0)]
    pause: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.part {
        Some(Part::H2Backend { listen, name }) => h2::backend::serve(listen, &name),
        Some(Part::L4Backend { listen, name }) => l4::backend::serve(listen, &name),
        Some(Part::L4Load {
            target,
            mode,
            connections,
            seconds,
            rate,
        }) => l4::client::load(target, mode, connections, seconds, rate).and_then(|report| {
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }),
        None => run(cli.args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> Result<()> {
    if args.smoke {
        args.repeats = 1;
        args.seconds = 1.0;
        args.idle = 500;
    }
    check_names("--only", &args.only, Config::ALL.map(Config::slug))?;
    check_names(
        "--workloads",
        &args.workloads,
        Workload::ALL.map(Workload::slug),
    )?;
    raise_fd_limit(args.idle as u64 + 2048)?;
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| {
            args.only.is_empty()
                || matches!(c, Config::Direct | Config::Haproxy)
                || args.only.iter().any(|o| o == c.slug())
        })
        .collect();
    let load_before = load_average();
    let bench = BenchNode::start().context("build the benchmark node")?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut results = Results::default();
    for repeat in 0..args.repeats {
        // Rotate the order so no configuration always runs first or last.
        let mut order = configs.clone();
        order.rotate_left(repeat % configs.len());
        for config in order {
            eprintln!(
                "==> repeat {}/{}: {}",
                repeat + 1,
                args.repeats,
                config.name()
            );
            let memory = measure(&bench, config, &args, duration, &mut results)
                .with_context(|| format!("{} (repeat {})", config.name(), repeat + 1));
            // Whatever an agent pinned goes, so the next one starts clean.
            bench.node.remove_pins();
            if let Some(m) = memory? {
                results.memory.entry(config).or_default().push(m);
            }
        }
    }
    let method = Method {
        command: std::env::var("LANEWAY_BENCH_COMMAND").unwrap_or_else(|_| "laneway-bench".into()),
        repeats: args.repeats,
        seconds: args.seconds,
        connections: args.connections,
        streams: args.streams,
        rate: args.rate,
        idle: args.idle,
        machine: machine(),
        load: format!("{load_before} at the start, {} at the end", load_average()),
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    };
    let markdown = results.markdown(&method);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("report.md"), &markdown)?;
    std::fs::write(args.out.join("throughput.svg"), results.svg())?;
    println!("{markdown}");
    eprintln!(
        "wrote {} and {}",
        args.out.join("report.md").display(),
        args.out.join("throughput.svg").display()
    );
    if let Some(path) = args.benchmarks {
        std::fs::write(&path, benchmarks_md(&markdown))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs every workload through `config`; returns its memory (none for the
/// direct path, which has no proxy).
fn measure(
    bench: &BenchNode,
    config: Config,
    args: &Args,
    duration: Duration,
    results: &mut Results,
) -> Result<Option<Memory>> {
    let running = config.start(bench)?;
    let client = bench.client(config);
    if args.pause > 0 {
        eprintln!("    pid {:?}: starting in {} s", running.pid, args.pause);
        std::thread::sleep(Duration::from_secs(args.pause));
    }
    let workloads = Workload::ALL.into_iter().filter(|w| {
        config.speaks(w.protocol())
            && (args.workloads.is_empty() || args.workloads.iter().any(|s| s == w.slug()))
    });
    for workload in workloads {
        let cpu = || running.pid.map(procstat::cpu_seconds).transpose();
        let before = cpu()?;
        let flat = load::run(
            bench,
            client,
            workload,
            workload.flat(args.connections, args.streams),
            duration,
        )
        .with_context(|| format!("{} at full speed\n{}", workload.name(), running.log()))?;
        let after = cpu()?;
        let fixed = match workload.has_fixed_rate() {
            true => load::run(
                bench,
                client,
                workload,
                Pace::Rate {
                    per_second: args.rate,
                },
                duration,
            )
            .with_context(|| format!("{} at a fixed rate\n{}", workload.name(), running.log()))?,
            false => load::Measured::none(),
        };
        eprintln!(
            "    {:<34} {:>8.0} {unit}/s   p99 {:>6.0} µs at {} {unit}/s",
            workload.name(),
            flat.per_second,
            fixed.p99_us,
            args.rate,
            unit = workload.unit(),
        );
        results
            .samples
            .entry((config, workload))
            .or_default()
            .push(Sample {
                per_second: flat.per_second,
                cpu_per_1000: before
                    .zip(after)
                    .map(|(b, a)| (a - b) / flat.ok as f64 * 1000.0),
                saturated_p99_us: flat.p99_us,
                p50_us: fixed.p50_us,
                p99_us: fixed.p99_us,
                p999_us: fixed.p999_us,
            });
    }
    let Some(pid) = running.pid else {
        return Ok(None);
    };
    let (_, peak_kib) = procstat::memory_kib(pid)?;
    // Leave HAProxy a few of its connections for the probes.
    let held = config
        .connection_cap()
        .map_or(args.idle, |cap| args.idle.min(cap - 20));
    let idle = load::idle_connections(bench, client, held)
        .with_context(|| format!("hold idle connections\n{}", running.log()))?;
    std::thread::sleep(Duration::from_millis(500));
    let (idle_kib, _) = procstat::memory_kib(pid)?;
    drop(idle);
    eprintln!(
        "    memory: peak {:.1} MiB, {:.1} MiB with {held} idle connections",
        peak_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
    );
    Ok(Some(Memory {
        peak_kib,
        idle_kib,
        held,
    }))
}

/// Fails on a name in `given` that is not one of `known`, listing them.
fn check_names<const N: usize>(option: &str, given: &[String], known: [&str; N]) -> Result<()> {
    match given.iter().find(|g| !known.contains(&g.as_str())) {
        Some(bad) => anyhow::bail!("{option}: no {bad:?}; one of {}", known.join(", ")),
        None => Ok(()),
    }
}

/// BENCHMARKS.md: the method and notes (kept in `bench/BENCHMARKS.head.md`),
/// then this run's report.
fn benchmarks_md(report: &str) -> String {
    format!(
        "{}\n## Latest numbers\n\n{report}",
        include_str!("../BENCHMARKS.head.md")
    )
}

/// Kernel, CPU model and cores.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "Linux {}, {cpu}, {} cores",
        command_output("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// The load averages over 1, 5 and 15 minutes: how busy the machine was
/// with work other than the benchmark.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The open-files limit (soft, raised to the hard one at the start).
fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Lets this process and its children (oha, the proxies) hold as many
/// sockets as the hard limit allows, which must leave room for `needed`.
fn raise_fd_limit(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            anyhow::bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            anyhow::bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    if limit.rlim_max < needed {
        anyhow::bail!(
            "the open-files hard limit ({}) is below the {needed} that --idle needs: \
             raise it (ulimit -Hn) or ask for fewer idle connections",
            limit.rlim_max
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_configuration_is_an_error_naming_the_right_ones() {
        let known = Config::ALL.map(Config::slug);
        assert!(check_names("--only", &["tc".into(), "nginx".into()], known).is_ok());
        let e = check_names("--only", &["sokcet".into()], known).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--only: no \"sokcet\"; one of direct, socket, tc, redirect, haproxy, nginx"
        );
    }
}

//! The `laneway` binary: the node agent and its command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use laneway::{agent, config::Config};

/// laneway keeps every request in its lane, without sidecars.
///
/// The agent loads eBPF programs that redirect enrolled pods' connections to
/// service VIPs to a per-node router; the router sends each HTTP request to
/// the endpoints that carry the request's tag (header `x-mse-tag` by default),
/// falling back to the untagged (base) endpoints.
///
/// Exit codes: 0 success; 1 runtime failure (or the agent answered with an
/// error, or a preflight check failed); 2 bad usage or bad config; 3 the
/// agent is not running; 4 permission denied on the admin socket (root only).
#[derive(Parser, Debug)]
#[command(name = "laneway", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LANEWAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent (needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
    ///
    /// Example: `laneway agent --config /etc/laneway/laneway.yaml`
    ///
    /// The file is watched: edits (or SIGHUP) reload services, endpoints and
    /// pods without dropping connections; a bad edit is logged and the last
    /// good config stays. SIGTERM or SIGINT stop the agent; pods' new
    /// connections then keep their lanes without the router (the kernel
    /// programs pick an endpoint of the caller's lane, else base). Log
    /// level: `RUST_LOG` (default info).
    Agent(agent::Options),
    /// Check or print a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Remove everything the agent left on the node: what it pinned in bpffs
    /// (maps and program links: the programs detach) and, from TC mode, its
    /// clsact filters on any interface, the `ip rule` and table 15006 and
    /// the NOTRACK rules. Run it on each node (in the host's network
    /// namespace) after deleting the DaemonSet (a running agent would set
    /// them up again).
    ///
    /// Example: `laneway uninstall` or `laneway uninstall --pin-path /sys/fs/bpf/laneway`
    Uninstall {
        /// The agent's `bpf.pin_path`.
        #[arg(long, default_value = "/sys/fs/bpf/laneway")]
        pin_path: PathBuf,
    },
    /// Commands that ask the running agent (or, for preflight, the node).
    #[command(flatten)]
    Node(laneway::cli::Command),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file; errors name the field and the line.
    ///
    /// Example: `laneway config check laneway.yaml`
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a config file as the agent reads it, every default filled in.
    Dump {
        /// The file.
        file: PathBuf,
    },
    /// Print the running agent's config in force: its settings from start,
    /// and (static file) the services, pods, tags and policy of the last
    /// reload that was applied. Asks the agent's admin socket.
    ///
    /// Example: `sudo laneway config show` or `sudo laneway config show -o json`
    Show {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: laneway::cli::Common,
    },
}

/// `laneway uninstall`: everything is tried; exit 1 if anything failed.
fn uninstall(pin_path: &std::path::Path) -> ExitCode {
    let mut failed = false;
    match laneway::bpf::unpin_all(pin_path) {
        Ok(()) => println!(
            "removed {}: laneway's programs are detached",
            pin_path.display()
        ),
        Err(e) => {
            eprintln!("error: cannot remove {}: {e}", pin_path.display());
            failed = true;
        }
    }
    match laneway::tproxy::remove_tc_filters_everywhere() {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => println!("removed laneway's TC filter from {}", removed.join(", ")),
        Err(e) => {
            eprintln!("error: cannot remove laneway's TC filters: {e}");
            failed = true;
        }
    }
    match laneway::tproxy::remove_node_setup() {
        Ok(()) => println!("removed TC mode's ip rule, table 15006 and NOTRACK rules (if any)"),
        Err(e) => {
            eprintln!("error: cannot remove TC mode's routing rules: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Agent(options) => run_agent(options),
        Command::Node(command) => laneway::cli::run(command),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(c) => {
                // Counted as `laneway status` counts them.
                let endpoints =
                    laneway::snapshot::Snapshot::from_config(&c, String::new(), None, true)
                        .endpoint_count();
                println!(
                    "{}: ok ({} services, {} endpoints, {} pods)",
                    file.display(),
                    c.services.len(),
                    endpoints,
                    c.pods.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Config(ConfigCommand::Show { common }) => laneway::cli::show_config(&common),
        Command::Config(ConfigCommand::Dump { file }) => {
            match Config::load(&file).map(|c| serde_yaml::to_string(&c)) {
                Ok(Ok(text)) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("error: cannot print the config: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn run_agent(options: agent::Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (agent::Error::Config(_)
            | agent::Error::KubeWithStatic(_)
            | agent::Error::NoRedirectAddress),
        ) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a container runtime keeps stderr as the
    // log `kubectl logs` shows, where escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

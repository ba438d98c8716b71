//! The node CLI: `laneway status | pods | services | lanes | conns | explain |
//! trace | maps | preflight`.
//!
//! Every command but `preflight` asks the running agent over its admin socket
//! (HTTP/1.1 with JSON bodies on a root-only Unix socket, default
//! [`DEFAULT_SOCKET`], or `--socket` / `LANEWAY_ADMIN_SOCKET`); `preflight`
//! checks the node itself and needs no agent. Each command prints a table for
//! people (`-o table`, the default) or the admin API's JSON document
//! (`-o json`; `trace` prints one JSON object per line).
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | the agent answered with an error, or a preflight check failed |
//! | 2 | usage error |
//! | 3 | the agent is not running (no admin socket, or nobody listening on it) |
//! | 4 | permission denied on the admin socket (it is root only) |
//!
//! Errors go to stderr as `error: ...`.
//!
//! Each command is [`execute`]d into any writer, so what people see can be
//! tested without a terminal; [`run`] prints to stdout and maps errors to exit
//! codes.

pub(crate) mod client;
mod lanes;
mod render;
mod table;
#[cfg(test)]
mod tests;

use std::{
    io::{self, BufRead, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use serde::Serialize;

use crate::admin::api::{
    Conns, DEFAULT_SOCKET, ExplainRequest, Explanation, LaneMap, Maps, Pods, Services, Status,
    TraceEvent,
};
use client::{Client, encode_query};

/// The exit codes, appended to every command's `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  the agent answered with an error, or a preflight check failed
  2  usage error
  3  the agent is not running (no admin socket, or nobody listening on it)
  4  permission denied on the admin socket (it is root only: use sudo)";

/// Commands that ask the running agent (and `preflight`, which asks the node).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Show the agent's health: programs, map fill levels, router, snapshot
    ///
    /// Example: `sudo laneway status`
    ///
    /// Sections:
    ///   version, mode, ready   the agent; ready = the first snapshot is applied
    ///   cgroup, connections    where the programs attach; router client connections open now
    ///   programs               NAME, HOOK (cgroup/connect4, ...), ATTACHED TO (cgroup path)
    ///   maps                   NAME, ENTRIES (now/capacity), FILL (percent of capacity)
    ///   router                 listen addresses, redirect address(es), heartbeat age and
    ///                          whether the programs consider the router alive (a stale
    ///                          heartbeat means connects go the normal way: fail-open)
    ///   snapshot               source (file:PATH or kubernetes), age, updates applied,
    ///                          services, VIP ports, endpoints (each once, however many
    ///                          ports it serves, as `config check` counts them), pods
    ///                          enrolled / not enrolled
    ///   bpf stats              redirected connects, fail-open connects, original-destination
    ///                          queries answered and missed
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Status {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// List the pods enrolled on this node, and those that should be but are not
    ///
    /// Example: `sudo laneway pods`
    ///
    /// Columns:
    ///   NAMESPACE, NAME   the pod
    ///   TAG               the pod's own lane (base = untagged); untagged requests
    ///                     from it inherit this tag
    ///   NETNS-COOKIE      its network-namespace cookie: the key of the ENROLLED map
    ///   IPS               its IPs
    /// Then "not enrolled": POD (namespace/name) and REASON (e.g. its network
    /// namespace could not be found), or "(none)".
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Pods {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Show services, their ports and each port's endpoints by lane
    ///
    /// Examples: `sudo laneway services`, `sudo laneway services shop/reviews`
    ///
    /// Per service a line `namespace/name  VIPs`, then per port
    /// `port PORT -> TARGET-PORT (PROTOCOL)` and a table:
    ///   TAG        the endpoint's lane (base = untagged)
    ///   ENDPOINT   ip:port
    ///   NAME       its pod, if known
    ///   STATE      serving, terminating or not serving: only serving endpoints
    ///              get new requests
    ///   IN-FLIGHT  requests in flight to it now
    ///   WEIGHT     load-balancing weight (1 = full; less while warming up)
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Services {
        /// Only this service: `name` or `namespace/name` (an unknown name exits 1).
        name: Option<String>,
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Show every service's lanes side by side: endpoints, policy, requests
    ///
    /// Example: `sudo laneway lanes`. The same document (`-o json`) feeds the
    /// lane map, a page at `/ui` on `admin.listen`.
    ///
    /// Per service a line `namespace/name  VIPs`, its policy, then a table:
    ///   LANE       base, a tag, or `other tags` (requests with a tag the
    ///              service does not know); `match RULE` lines under a lane
    ///              are the match rules that lead to it
    ///   MODE       strict (503 without an endpoint) or permissive (falls back
    ///              to base); - for base
    ///   CANARY     its share of untagged requests
    ///   ENDPOINTS  each endpoint (pod name, else IP) with its state: serving,
    ///              warming, ejected, terminating, not-serving
    ///   REQUESTS   requests of this lane since the agent started, by decision
    ///              (tagged, fallback, base, canary, strict-reject, none), with
    ///              their 5xx
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Lanes {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// List the client connections the router holds now
    ///
    /// Example: `sudo laneway conns`
    ///
    /// Columns:
    ///   ID           router-local connection id
    ///   CALLER       the calling pod (namespace/name), else the client's address
    ///   DESTINATION  the VIP:port the app dialled
    ///   SERVICE      the service behind it (- if none)
    ///   ENDPOINT     the endpoint of the request in flight, or of the last one
    ///   TAG          that request's tag (- = none)
    ///   PROTO        http, tcp (passed through at L4) or sniffing
    ///   REQS         requests routed on this connection
    ///   BYTES-IN     bytes received from the client
    ///   BYTES-OUT    bytes sent to the client and acknowledged
    ///   AGE          how long the connection has been open
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Conns {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Dry-run a routing decision: which endpoint would get this request, and why
    ///
    /// Examples:
    ///   sudo laneway explain --from shop/client --to reviews:80 -H 'x-mse-tag: joint1'
    ///   sudo laneway explain --to shop/reviews                  (a caller that is not enrolled)
    ///   sudo laneway explain --from 10.244.0.10 --to 10.96.0.10:80 -H 'baggage: x-mse-tag=gray'
    ///
    /// Prints the caller, the service and VIP:port, the tag and where it came from
    /// (header:NAME, baggage, caller or none), the candidate endpoints, each step
    /// of the decision numbered, and then either
    ///   => endpoint IP:PORT (decision tagged|fallback|base|canary)
    /// or
    ///   => no endpoint: REASON (decision strict-reject|none; the router answers 503)
    /// An unknown --from pod or --to service exits 1.
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Explain {
        /// The calling pod: `namespace/name`, `name` or an IP. Omit it for a
        /// caller that is not an enrolled pod.
        #[arg(long, value_name = "POD")]
        from: Option<String>,
        /// The service: `name`, `namespace/name` or a VIP, each optionally
        /// `:PORT` (default: the service's first port).
        #[arg(long, value_name = "SERVICE[:PORT]", value_parser = parse_target)]
        to: String,
        /// A request header, `NAME: VALUE` (repeatable), e.g. `-H 'x-mse-tag: joint1'`.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The request's path and query, for match rules on a query
        /// parameter, e.g. `--path '/items?lane=g42'`.
        #[arg(long, value_name = "PATH", default_value = "/")]
        path: String,
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Follow routing decisions live, one line per request, until Ctrl-C
    ///
    /// Examples:
    ///   sudo laneway trace
    ///   sudo laneway trace --service shop/reviews --tag joint1
    ///   sudo laneway trace --count 10 -o json
    ///
    /// Each line:
    ///   TIME CALLER -> SERVICE tag=TAG (SOURCE) DECISION -> ENDPOINT STATUS DURATION
    /// TIME is local wall-clock time; CALLER the calling pod (- if unknown); TAG
    /// the request tag (- = none) and SOURCE where it came from (header:NAME,
    /// baggage, caller, none); DECISION tagged, fallback, base, canary,
    /// strict-reject (a strict lane without endpoints), or none (no decision:
    /// no endpoint, or a request the router could not read);
    /// STATUS the HTTP status sent to the client (L4 for a byte stream);
    /// DURATION how long the request took. Router errors follow as `error: ...`.
    /// With -o json each decision is printed as the agent sends it: one JSON
    /// object per line. Ctrl-C ends the trace with exit code 0.
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Trace {
        /// Only requests to this service (`name` or `namespace/name`).
        #[arg(long)]
        service: Option<String>,
        /// Only requests with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Stop after this many decisions (exit 0).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Dump laneway's BPF maps, decoded
    ///
    /// Example: `sudo laneway maps`
    ///
    /// Tables:
    ///   ENROLLED        NETNS-COOKIE (key), POD-ID (value), POD it stands for
    ///   SERVICES        VIP (key, VIP:port), SERVICE-ID (value), SERVICE it stands for
    ///   ROUTER[0]       redirect addresses and port, socket mark of the router's own
    ///                   sockets, heartbeat (CLOCK_MONOTONIC ns; 0 = shut down)
    ///   ORIG_BY_COOKIE  SOCKET-COOKIE (key), original DESTINATION, caller NETNS-COOKIE, POD-ID
    ///   ORIG_BY_CONN    CLIENT and ROUTER addresses (key), original DESTINATION, NETNS-COOKIE
    ///   STATS           the kernel programs' counters, summed over CPUs
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Maps {
        /// `--output` and `--socket`.
        #[command(flatten)]
        common: Common,
    },

    /// Check that this node can run laneway (no agent needed)
    ///
    /// Example: `sudo laneway preflight`
    ///
    /// Checks: the kernel version (5.14 or newer), BTF, a mounted cgroup v2
    /// hierarchy, bpffs at /sys/fs/bpf, privileges (root, or CAP_BPF,
    /// CAP_NET_ADMIN and CAP_SYS_ADMIN), loading each of laneway's programs
    /// into the kernel (without attaching them), SO_NETNS_COOKIE, and other
    /// programs on the cgroup v2 root's connect and sock_ops hooks that
    /// conflict with laneway (Cilium socket LB, Calico connect-time LB,
    /// Merbridge, Kmesh, ...).
    ///
    /// Columns: RESULT (pass, warn or fail), CHECK, DETAIL (what was found);
    /// under a warning or failure, `fix:` says what to do. Exits 1 if any
    /// check failed (warnings alone exit 0).
    ///
    /// With `--config FILE`, also checks that file and what its redirect
    /// mode needs (TC mode: `ip`, `tc` and `iptables`, and how the program
    /// attaches): `sudo laneway preflight --config /etc/laneway/laneway.yaml`
    #[command(verbatim_doc_comment, after_long_help = EXIT_CODES)]
    Preflight {
        /// `--output`.
        #[command(flatten)]
        output: OutputArg,
        /// The agent's config file: check its mode's needs too.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// The output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Tables for people.
    #[default]
    Table,
    /// The admin API's JSON document (`trace`: one object per line).
    Json,
}

/// The output option.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArg {
    /// Output format: `table` for people, `json` for programs.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Options shared by the commands that ask the agent.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// `--output`.
    #[command(flatten)]
    pub format: OutputArg,
    /// The agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "LANEWAY_ADMIN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            format: OutputArg::default(),
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// What went wrong in a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No socket file.
    #[error(
        "laneway agent is not running (no admin socket at {}): start it, or pass --socket",
        path.display()
    )]
    NotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nobody accepts on it (a stale socket).
    #[error(
        "laneway agent is not running (nothing listens on the admin socket at {}): start it, or pass --socket",
        path.display()
    )]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket (or its directory) is not accessible to this user.
    #[error(
        "permission denied on {}: the admin socket is root only; run with sudo",
        path.display()
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Any other connect failure.
    #[error("cannot connect to the admin socket at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("talking to the agent at {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The agent did not answer in time.
    #[error("the agent at {} did not answer within {}s", path.display(), after.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long the CLI waited.
        after: Duration,
    },
    /// The answer was not HTTP as expected.
    #[error("the agent sent a malformed answer: {0}")]
    Protocol(String),
    /// The agent answered with an error status.
    #[error("the agent answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The agent's message.
        message: String,
    },
    /// A JSON document could not be decoded (or encoded).
    #[error("cannot decode the agent's answer to {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// The trace stream ended without the agent closing it properly.
    #[error("the trace stream broke off (did the agent stop?): {0}")]
    StreamBroken(#[source] io::Error),
    /// Preflight found failing checks (the table says which).
    #[error("{failed} preflight check(s) failed: see the fix lines above")]
    PreflightFailed {
        /// How many checks failed.
        failed: usize,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

impl Error {
    /// The process exit code for this error (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotRunning { .. } | Error::NotListening { .. } => 3,
            Error::PermissionDenied { .. } => 4,
            _ => 1,
        }
    }
}

/// Parses `-H 'NAME: VALUE'`: split at the first `:`, both sides trimmed.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!(
            "a header is `NAME: VALUE`, and {s:?} has no ':' (example: -H 'x-mse-tag: joint1')"
        ));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("the header {s:?} has no name before the ':'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

fn parse_target(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("name a service: `name`, `namespace/name` or a VIP, optionally `:PORT`".into());
    }
    Ok(s.to_owned())
}

/// Runs a command, printing to stdout; returns the exit code (see the module
/// documentation). Errors are printed to stderr as `error: ...`.
pub fn run(command: Command) -> ExitCode {
    if matches!(command, Command::Trace { .. }) {
        exit_on_interrupt();
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = execute(&command, &mut out);
    let _ = out.flush();
    exit_code(result)
}

/// `laneway config show`: the running agent's config in force (YAML for
/// people, JSON with `-o json`).
pub fn show_config(common: &Common) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = client(common)
        .get::<serde_json::Value>("/config")
        .and_then(|doc| {
            emit(&mut out, common.format.output, &doc, |doc| {
                serde_yaml::to_string(doc).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
            })
        });
    let _ = out.flush();
    exit_code(result)
}

/// The exit code for a command's result, printing the error if any.
fn exit_code(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `laneway trace | head`: the reader is gone, which is no failure.
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Ctrl-C ends `trace` with exit code 0. Each line is flushed as it is
/// printed, so nothing is lost by exiting from the handler.
fn exit_on_interrupt() {
    extern "C" fn on_interrupt(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    let handler = nix::sys::signal::SigHandler::Handler(on_interrupt);
    // SAFETY: the handler only calls an async-signal-safe function.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, handler) };
}

/// Runs a command, writing what people (or programs) see to `out`.
pub fn execute(command: &Command, out: &mut impl Write) -> Result<(), Error> {
    match command {
        Command::Status { common } => {
            let doc: Status = client(common).get("/status")?;
            emit(out, common.format.output, &doc, render::status)
        }
        Command::Pods { common } => {
            let doc: Pods = client(common).get("/pods")?;
            emit(out, common.format.output, &doc, render::pods)
        }
        Command::Services { name, common } => {
            let path = match name {
                Some(name) => format!("/services?name={}", encode_query(name)),
                None => "/services".to_owned(),
            };
            let doc: Services = client(common).get(&path)?;
            emit(out, common.format.output, &doc, render::services)
        }
        Command::Lanes { common } => {
            let doc: LaneMap = client(common).get("/lanes")?;
            emit(out, common.format.output, &doc, lanes::render)
        }
        Command::Conns { common } => {
            let doc: Conns = client(common).get("/conns")?;
            emit(out, common.format.output, &doc, render::conns)
        }
        Command::Explain {
            from,
            to,
            headers,
            path,
            common,
        } => {
            let request = ExplainRequest {
                from: from.clone().unwrap_or_default(),
                to: to.clone(),
                headers: headers.clone(),
                path: Some(path.clone()),
            };
            let doc: Explanation = client(common).post("/explain", &request)?;
            emit(out, common.format.output, &doc, render::explanation)
        }
        Command::Trace {
            service,
            tag,
            count,
            common,
        } => trace(
            &client(common),
            service.as_deref(),
            tag.as_deref(),
            *count,
            common.format.output,
            out,
        ),
        Command::Maps { common } => {
            let doc: Maps = client(common).get("/maps")?;
            emit(out, common.format.output, &doc, render::maps)
        }
        Command::Preflight { output, config } => {
            let doc = crate::preflight::run(config.as_deref());
            emit(out, output.output, &doc, render::preflight)?;
            match crate::preflight::failed(&doc) {
                0 => Ok(()),
                failed => Err(Error::PreflightFailed { failed }),
            }
        }
    }
}

fn client(common: &Common) -> Client {
    Client::new(&common.socket)
}

/// Writes `doc` as a table or as pretty JSON.
fn emit<T: Serialize>(
    out: &mut impl Write,
    format: Output,
    doc: &T,
    table: fn(&T) -> String,
) -> Result<(), Error> {
    let text = match format {
        Output::Table => table(doc),
        Output::Json => {
            let mut json = serde_json::to_string_pretty(doc).map_err(|source| Error::Decode {
                what: "the output".to_owned(),
                source,
            })?;
            json.push('\n');
            json
        }
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    out.flush().map_err(Error::Output)
}

/// Streams `/trace`, printing each decision as soon as it arrives.
fn trace(
    client: &Client,
    service: Option<&str>,
    tag: Option<&str>,
    count: Option<u64>,
    format: Output,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut query = Vec::new();
    if let Some(service) = service {
        query.push(format!("service={}", encode_query(service)));
    }
    if let Some(tag) = tag {
        query.push(format!("tag={}", encode_query(tag)));
    }
    let mut path = "/trace".to_owned();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let mut body = client.stream(&path)?;
    let mut seen = 0u64;
    let mut line = String::new();
    while count.is_none_or(|n| seen < n) {
        line.clear();
        match body.read_line(&mut line) {
            // The agent ended the stream cleanly.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Error::Protocol(e.to_string()));
            }
            Err(e) => return Err(Error::StreamBroken(e)),
        }
        let text = line.trim();
        // Blank lines are keep-alives.
        if text.is_empty() {
            continue;
        }
        let event: TraceEvent = serde_json::from_str(text).map_err(|source| Error::Decode {
            what: "/trace".to_owned(),
            source,
        })?;
        let printed = match format {
            Output::Table => render::trace_line(&event),
            Output::Json => text.to_owned(),
        };
        writeln!(out, "{printed}").map_err(Error::Output)?;
        out.flush().map_err(Error::Output)?;
        seen += 1;
    }
    Ok(())
}

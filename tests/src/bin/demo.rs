//! `cargo xtask demo`: a demo node (an untagged and a `joint1` client pod;
//! `reviews` with base, `joint1` and `gray` endpoints; `ratings` with only
//! base; `reviews-grpc`, its gRPC twin), the agent on a static config, and
//! requests and gRPC calls with and without tags, a canary, and a lane of
//! `reviews` served by a "laptop" outside the pod network. Prints where each
//! went and why, then a debugging session with the CLI and where the lane
//! map (`/ui` on the agent's admin listener) is; exits 0 only if every
//! answer matches laneway's routing semantics. `--hold` keeps the node up
//! afterwards, with a trickle of traffic, and serves the lane map on this
//! machine's 127.0.0.1:15080 until Enter is pressed.

use std::process::ExitCode;

use anyhow::Result;
use laneway_tests::{
    Standard,
    backend::Backend,
    client,
    grpc::{self, GrpcStandard},
    shares,
    standard::Mode,
};

struct Row {
    caller: &'static str,
    service: &'static str,
    tag: Option<&'static str>,
    expected_endpoint: &'static str,
    expected_decision: &'static str,
}

const PLAN: &[Row] = &[
    Row {
        caller: "client",
        service: "reviews",
        tag: None,
        expected_endpoint: "reviews-base",
        expected_decision: "base",
    },
    Row {
        caller: "client",
        service: "reviews",
        tag: Some("joint1"),
        expected_endpoint: "reviews-joint1",
        expected_decision: "tagged",
    },
    Row {
        caller: "client",
        service: "reviews",
        tag: Some("gray"),
        expected_endpoint: "reviews-gray",
        expected_decision: "tagged",
    },
    Row {
        caller: "client",
        service: "reviews",
        tag: Some("joint2"),
        expected_endpoint: "reviews-base",
        expected_decision: "fallback",
    },
    Row {
        caller: "client",
        service: "ratings",
        tag: None,
        expected_endpoint: "ratings-base",
        expected_decision: "base",
    },
    Row {
        caller: "client",
        service: "ratings",
        tag: Some("joint1"),
        expected_endpoint: "ratings-base",
        expected_decision: "fallback",
    },
    Row {
        caller: "client-joint1",
        service: "reviews",
        tag: None,
        expected_endpoint: "reviews-joint1",
        expected_decision: "tagged",
    },
    Row {
        caller: "client-joint1",
        service: "ratings",
        tag: None,
        expected_endpoint: "ratings-base",
        expected_decision: "fallback",
    },
];

fn main() -> ExitCode {
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("demo: some answers did not match laneway's routing semantics");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn demo() -> Result<bool> {
    eprintln!(
        "==> building a node: 7 pods and a laptop in network namespaces, kube-proxy stand-in, laneway agent"
    );
    let mut g = GrpcStandard::start(Mode::Socket, |_| {})?;
    let laptop = g.standard.node.add_outside_host("laptop", LAPTOP)?;
    let s = &g.standard;
    eprintln!("==> agent running; sending requests from enrolled pods\n");
    let header = [
        "caller pod",
        "service",
        "x-mse-tag",
        "answered by",
        "decision",
        "check",
    ];
    let mut rows = Vec::new();
    let mut all_ok = true;
    for row in PLAN {
        let pod = if row.caller == "client" {
            s.pods.client
        } else {
            s.pods.client_joint1
        };
        let vip = if row.service == "reviews" {
            s.reviews()
        } else {
            s.ratings()
        };
        let headers: Vec<(&str, &str)> = row.tag.map(|t| ("x-mse-tag", t)).into_iter().collect();
        let (endpoint, decision) = match client::get(s.node.pod(pod), vip, &headers) {
            Ok(r) => {
                let route = r.header("x-laneway-route").unwrap_or("").to_owned();
                let decision = route
                    .split("; ")
                    .find_map(|kv| kv.strip_prefix("decision="))
                    .unwrap_or("-")
                    .to_owned();
                (r.endpoint().to_owned(), decision)
            }
            Err(e) => (format!("error: {e}"), "-".into()),
        };
        let ok = endpoint == row.expected_endpoint && decision == row.expected_decision;
        all_ok &= ok;
        rows.push([
            row.caller.to_owned(),
            row.service.to_owned(),
            row.tag.unwrap_or("-").to_owned(),
            endpoint,
            decision,
            if ok {
                "ok".into()
            } else {
                format!(
                    "WRONG, want {} ({})",
                    row.expected_endpoint, row.expected_decision
                )
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.to_vec()));
    println!(
        "{}",
        line(
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect()
        )
    );
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    println!(
        "\n{} of {} requests routed as laneway's semantics say (client-joint1 is a pod labelled \
         laneway.io/tag=joint1: its untagged requests inherit its lane).",
        rows.iter().filter(|r| r[5] == "ok").count(),
        rows.len()
    );
    all_ok &= grpc_calls(&g)?;
    all_ok &= canary(s)?;
    let (ok, _laptop) = external_lane(s, laptop)?;
    all_ok &= ok;
    debugging_session(s)?;
    lane_map(s)?;
    if std::env::args().any(|a| a == "--hold") {
        hold(s)?;
    }
    Ok(all_ok)
}

/// Where `--hold` serves the lane map on this machine.
const HOLD_ADDR: &str = "127.0.0.1:15080";

/// Where the lane map is (`laneway lanes`, in the debugging session, shows
/// what it shows).
fn lane_map(s: &Standard) -> Result<()> {
    let (status, page) = s.node.admin_get("/ui")?;
    anyhow::ensure!(status == 200, "/ui answered {status}: {page}");
    println!(
        "\n==> lane map: http://127.0.0.1:{}/ui on the agent's admin listener, in the node's \
         network namespace ({}); `laneway lanes` above is the same document.\n    \
         To look at it: `cargo xtask demo --hold` keeps this node up and serves the page at \
         http://{HOLD_ADDR}/ui (from another machine: ssh -L 15080:{HOLD_ADDR} THIS-HOST).",
        laneway_tests::node::METRICS_PORT,
        s.node.netns.name()
    );
    Ok(())
}

/// Keeps the node up with a trickle of traffic and forwards `HOLD_ADDR`
/// to the admin listener inside the node netns, until Enter is pressed.
fn hold(s: &Standard) -> Result<()> {
    let listener = std::net::TcpListener::bind(HOLD_ADDR)?;
    listener.set_nonblocking(true)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "\n==> holding: open http://{HOLD_ADDR}/ui (ssh -L 15080:{HOLD_ADDR} THIS-HOST from \
         elsewhere); press Enter to stop"
    );
    std::thread::scope(|scope| -> Result<()> {
        let _stop = laneway_tests::StopOnDrop(&stop);
        scope.spawn(|| {
            let tags = [
                None,
                None,
                None,
                Some("joint1"),
                Some("gray"),
                Some("joint2"),
            ];
            while !stopped() {
                for tag in tags {
                    let headers: Vec<(&str, &str)> =
                        tag.map(|t| ("x-mse-tag", t)).into_iter().collect();
                    let _ = client::get(s.node.pod(s.pods.client), s.reviews(), &headers);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        scope.spawn(|| {
            while !stopped() {
                let Ok((visitor, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                };
                let admin = s.node.netns.run(|| {
                    std::net::TcpStream::connect(("127.0.0.1", laneway_tests::node::METRICS_PORT))
                });
                if let (Ok(Ok(admin)), Ok(())) = (admin, visitor.set_nonblocking(false)) {
                    splice(visitor, admin);
                }
            }
        });
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    })
}

/// Copies bytes both ways between two connections, on two threads.
fn splice(a: std::net::TcpStream, b: std::net::TcpStream) {
    for (mut from, mut to) in [(a.try_clone(), b.try_clone()), (Ok(b), Ok(a))]
        .into_iter()
        .filter_map(|(x, y)| Some((x.ok()?, y.ok()?)))
    {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// gRPC calls on one HTTP/2 connection from the untagged client, each in
/// its lane: `lanes.Echo/Unary` on `reviews-grpc`, with and without
/// `x-mse-tag: joint1` metadata.
fn grpc_calls(g: &GrpcStandard) -> Result<bool> {
    println!(
        "\n==> gRPC: lanes.Echo/Unary on {} over one HTTP/2 connection",
        grpc::TWIN
    );
    let mut all_ok = true;
    grpc::runtime()?.block_on(async {
        let mut client = g.client(g.standard.pods.client)?;
        for (tag, expected) in [(Some("joint1"), "reviews-joint1"), (None, "reviews-base")] {
            let request = grpc::tagged(grpc::EchoRequest::default(), tag);
            let (answer, ok) = match client.unary(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let answer = format!(
                        "answered by {}, which saw x-mse-tag: {}",
                        reply.endpoint, reply.seen_tag
                    );
                    (answer, reply.endpoint == expected)
                }
                Err(status) => (format!("error: {status}"), false),
            };
            all_ok &= ok;
            let check = if ok { "" } else { "  WRONG" };
            println!("    x-mse-tag: {:<7} {answer}{check}", tag.unwrap_or("-"));
        }
        anyhow::Ok(())
    })?;
    Ok(all_ok)
}

/// A gray release: 20% of untagged requests to `reviews` go to its gray
/// endpoint, set by editing the config while the agent runs.
fn canary(s: &Standard) -> Result<bool> {
    println!("\n==> gray release: reviews gets policy {{canary: gray=20}} (config reloaded live)");
    let text = std::fs::read_to_string(&s.agent.config)?;
    let with_policy = text.replacen(
        "    ports: [{port: 80, target_port: 8080, protocol: auto}]\n",
        "    ports: [{port: 80, target_port: 8080, protocol: auto}]\n    policy: {canary: gray=20}\n",
        1,
    );
    std::fs::write(&s.agent.config, with_policy)?;
    s.agent
        .wait_for_log("config reloaded", std::time::Duration::from_secs(5))?;
    let mut conn = client::Conn::open(s.node.pod(s.pods.client), s.reviews())?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..1000 {
        *counts
            .entry(conn.get("/", &[])?.endpoint().to_owned())
            .or_default() += 1;
    }
    for (endpoint, n) in &counts {
        println!("    {endpoint:<16} {n:>4} of 1000 untagged requests");
    }
    let gray = counts.get("reviews-gray").copied().unwrap_or(0);
    let ok =
        shares::plausible(1000, 0.20).contains(&gray) && !counts.contains_key("reviews-joint1");
    println!(
        "    check: {}",
        if ok {
            "ok (about 20% on gray, none on joint1)"
        } else {
            "WRONG"
        }
    );
    Ok(ok)
}

/// The laptop's address: outside the pod network, routed by the node (as
/// over a VPN).
const LAPTOP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 8, 0, 5);

/// Local debugging: `reviews`' lane dev-alice served by the laptop (pod
/// index `laptop` of the node), health-checked as it goes and comes back.
/// Returns whether every answer was right, and the laptop's server (up).
fn external_lane(s: &Standard, laptop: usize) -> Result<(bool, Backend)> {
    println!(
        "\n==> local debugging: reviews' lane dev-alice served from a laptop at {LAPTOP}:8080 \
         (outside the pod network; policy external_lanes, config reloaded live)"
    );
    let text = std::fs::read_to_string(&s.agent.config)?;
    std::fs::write(
        &s.agent.config,
        text.replacen(
            "policy: {canary: gray=20}",
            "policy: {canary: gray=20, external_lanes: 'dev-alice=10.8.0.5:8080'}",
            1,
        ),
    )?;
    let up = Backend::http(s.node.pod(laptop), 8080)?;
    let client = s.node.pod(s.pods.client);
    let dev = || client::get(client, s.reviews(), &[("x-mse-tag", "dev-alice")]);
    let served = |r: &client::Response| r.endpoint() == "laptop";
    let mut ok = true;
    let mut report = |what: &str, r: &client::Response, good: bool| {
        ok &= good;
        let answer = match r.status {
            200 => format!(
                "answered by {}, which saw x-mse-tag: {}",
                r.endpoint(),
                r.header("x-seen-tag").unwrap_or("-")
            ),
            status => format!("{status} {}", r.text().trim_end()),
        };
        println!(
            "    {what:<22} {answer}{}",
            if good { "" } else { "  WRONG" }
        );
    };
    let r = client::eventually("the laptop serves dev-alice", dev, served)?;
    report("x-mse-tag: dev-alice", &r, served(&r));
    let r = client::get(client, s.reviews(), &[("x-mse-tag", "joint1")])?;
    report("x-mse-tag: joint1", &r, r.endpoint() == "reviews-joint1");
    drop(up);
    let down = |r: &client::Response| r.status == 503;
    let r = client::eventually("503 once the laptop is down", dev, down)?;
    report("laptop down, dev-alice", &r, down(&r));
    let up = Backend::http(s.node.pod(laptop), 8080)?;
    let r = client::eventually("the laptop serves again", dev, served)?;
    report("laptop back, dev-alice", &r, served(&r));
    println!("    check: {}", if ok { "ok" } else { "WRONG" });
    Ok((ok, up))
}

/// What a person debugging a lane runs on the node.
fn debugging_session(s: &Standard) -> Result<()> {
    let socket = s.node.admin_socket();
    for args in [
        vec!["services", "reviews"],
        vec![
            "explain",
            "--from",
            "client",
            "--to",
            "reviews",
            "-H",
            "x-mse-tag: joint2",
        ],
        vec![
            "explain",
            "--from",
            "client",
            "--to",
            "reviews",
            "-H",
            "x-mse-tag: dev-alice",
        ],
        vec!["pods"],
        vec!["lanes"],
    ] {
        println!(
            "\n$ laneway {}",
            args.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new(laneway_tests::agent::binary())
            .args(&args)
            .arg("--socket")
            .arg(&socket)
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

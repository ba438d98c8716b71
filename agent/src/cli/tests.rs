//! CLI tests against a fake admin server: a Unix socket in a temp directory
//! answering canned documents, and a chunked `/trace`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use clap::Parser;

use super::*;
use crate::admin::api::{
    ApiError, BpfStats, ConnInfo, CookieEntry, EndpointInfo, EnrolledEntry, LaneEntry, LaneInfo,
    MapFill, PodInfo, PortInfo, ProgramStatus, RouterEntry, RouterStatus, ServiceEntry,
    ServiceInfo, SnapshotStatus, UnenrolledPod,
};

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "laneway-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn status_doc() -> Status {
    Status {
        version: "0.1.0".into(),
        mode: "socket".into(),
        ready: true,
        cgroup: "/sys/fs/cgroup".into(),
        programs: vec![ProgramStatus {
            name: "connect4".into(),
            hook: "cgroup/connect4".into(),
            attached_to: "/sys/fs/cgroup".into(),
        }],
        maps: vec![MapFill {
            name: "ENROLLED".into(),
            entries: 3,
            capacity: 1024,
        }],
        router: RouterStatus {
            listen: vec!["0.0.0.0:15001".into()],
            redirect_ipv4: "10.244.255.1".into(),
            redirect_ipv6: None,
            heartbeat_age_ms: 120,
            alive: true,
        },
        snapshot: SnapshotStatus {
            source: "file:/etc/laneway.yaml".into(),
            age_ms: 250_000,
            updates: 4,
            services: 2,
            service_ports: 3,
            endpoints: 5,
            pods_enrolled: 2,
            pods_unenrolled: 1,
        },
        bpf_stats: BpfStats {
            redirected: 42,
            fail_open: 1,
            origdst_answered: 40,
            origdst_missed: 2,
            kernel_routed: 3,
        },
        connections_active: 7,
    }
}

fn pods_doc() -> Pods {
    Pods {
        enrolled: vec![
            PodInfo {
                namespace: "default".into(),
                name: "client".into(),
                tag: None,
                netns_cookie: 4097,
                netns: "/run/netns/client".into(),
                ips: vec!["10.244.0.10".into()],
            },
            PodInfo {
                namespace: "default".into(),
                name: "client-joint1".into(),
                tag: Some("joint1".into()),
                netns_cookie: 4098,
                netns: "/run/netns/client-joint1".into(),
                ips: vec!["10.244.0.11".into(), "fd00::11".into()],
            },
        ],
        unenrolled: vec![UnenrolledPod {
            pod: "shop/cart".into(),
            reason: "network namespace not found".into(),
        }],
    }
}

fn endpoint(address: &str, name: &str, serving: bool, terminating: bool) -> EndpointInfo {
    EndpointInfo {
        ejected: false,
        external: false,
        address: address.into(),
        name: Some(name.into()),
        serving,
        terminating,
        eligible: serving && !terminating,
        in_flight: 2,
        weight: 1.0,
    }
}

fn services_doc() -> Services {
    Services {
        services: vec![
            ServiceInfo {
                policy: "none".into(),
                policy_error: None,
                namespace: "default".into(),
                name: "reviews".into(),
                vips: vec!["10.96.0.10".into(), "fd00:96::10".into()],
                ports: vec![PortInfo {
                    port: 80,
                    target_port: 8080,
                    protocol: "auto".into(),
                    lanes: vec![
                        LaneInfo {
                            tag: None,
                            endpoints: vec![
                                endpoint("10.244.0.13:8080", "reviews-base", true, false),
                                endpoint("10.244.0.15:8080", "reviews-old", true, true),
                            ],
                        },
                        LaneInfo {
                            tag: Some("joint1".into()),
                            endpoints: vec![endpoint(
                                "10.244.0.14:8081",
                                "reviews-joint1",
                                false,
                                false,
                            )],
                        },
                    ],
                }],
            },
            ServiceInfo {
                policy: "none".into(),
                policy_error: None,
                namespace: "default".into(),
                name: "ratings".into(),
                vips: vec!["10.96.0.11".into()],
                ports: vec![],
            },
        ],
    }
}

fn conns_doc() -> Conns {
    Conns {
        connections: vec![
            ConnInfo {
                id: 1,
                caller: Some("default/client".into()),
                peer: "10.244.0.10:40000".into(),
                destination: "10.96.0.10:80".into(),
                service: Some("default/reviews".into()),
                endpoint: Some("10.244.0.14:8081".into()),
                tag: Some("joint1".into()),
                protocol: "http".into(),
                requests: 3,
                open_streams: 0,
                bytes_in: 1_229,
                bytes_out: 5 * 1024 * 1024,
                age_ms: 3_200,
            },
            ConnInfo {
                id: 2,
                caller: None,
                peer: "10.244.0.99:40001".into(),
                destination: "10.96.0.11:5432".into(),
                service: None,
                endpoint: None,
                tag: None,
                protocol: "tcp".into(),
                requests: 0,
                open_streams: 0,
                bytes_in: 10,
                bytes_out: 0,
                age_ms: 250_000,
            },
            ConnInfo {
                id: 3,
                caller: Some("default/client".into()),
                peer: "10.244.0.10:40002".into(),
                destination: "10.96.0.12:50051".into(),
                service: Some("default/greeter".into()),
                endpoint: Some("10.244.0.20:50051".into()),
                tag: Some("joint1".into()),
                protocol: "h2".into(),
                requests: 120,
                open_streams: 7,
                bytes_in: 4_096,
                bytes_out: 8_192,
                age_ms: 1_000,
            },
        ],
    }
}

fn maps_doc() -> Maps {
    Maps {
        enrolled: vec![EnrolledEntry {
            netns_cookie: 4097,
            pod_id: 1,
            lane: 0,
            pod: Some("default/client".into()),
        }],
        services: vec![ServiceEntry {
            vip: "10.96.0.10:80".into(),
            service_id: 1,
            service: Some("default/reviews".into()),
        }],
        router: RouterEntry {
            addr4: "10.244.255.1".into(),
            addr6: "::".into(),
            port: 15001,
            mark: 0x4c57,
            heartbeat_ns: 123_456_789,
        },
        orig_by_cookie: vec![CookieEntry {
            socket_cookie: 777,
            destination: "10.96.0.10:80".into(),
            netns_cookie: 4097,
            pod_id: 1,
        }],
        orig_by_conn: vec![],
        lane_endpoints: vec![LaneEntry {
            vip: "10.96.0.10:80".into(),
            lane: 2,
            tag: Some("joint1".into()),
            endpoints: vec!["10.244.0.14:8080".into(), "10.244.0.16:8080".into()],
        }],
        stats: BpfStats {
            redirected: 42,
            ..BpfStats::default()
        },
    }
}

fn trace_events() -> Vec<TraceEvent> {
    vec![
        TraceEvent {
            external: false,
            time_ms: 1_700_000_000_123,
            caller: Some("default/client".into()),
            service: "default/reviews".into(),
            tag: Some("joint1".into()),
            tag_source: "header:x-mse-tag".into(),
            decision: Some("tagged".into()),
            endpoint: Some("10.244.0.14:8081".into()),
            status: 200,
            grpc_status: None,
            duration_us: 3_250,
            error: None,
        },
        TraceEvent {
            external: false,
            time_ms: 1_700_000_000_456,
            caller: None,
            service: "default/reviews".into(),
            tag: None,
            tag_source: "none".into(),
            decision: Some("base".into()),
            endpoint: Some("10.244.0.13:8080".into()),
            status: 0,
            grpc_status: None,
            duration_us: 850,
            error: None,
        },
        TraceEvent {
            external: false,
            time_ms: 1_700_000_000_789,
            caller: Some("default/client".into()),
            service: "default/ratings".into(),
            tag: Some("gray".into()),
            tag_source: "baggage".into(),
            decision: None,
            endpoint: None,
            status: 503,
            grpc_status: None,
            duration_us: 120,
            error: Some("no endpoint for tag gray".into()),
        },
    ]
}

/// A request as the fake server saw it.
struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
}

fn read_request(stream: &mut BufReader<UnixStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let n = stream.read_until(b'\n', &mut head).ok()?;
        if n == 0 {
            return None;
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).ok()?;
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some(Request {
        method: req.method?.to_owned(),
        target: req.path?.to_owned(),
        body,
    })
}

fn respond(stream: &mut UnixStream, status: u16, body: &str) {
    let reason = if status == 200 { "OK" } else { "Error" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn json<T: Serialize>(doc: &T) -> String {
    serde_json::to_string(doc).unwrap()
}

fn not_found(what: &str) -> String {
    json(&ApiError {
        error: format!("no {what}"),
    })
}

/// Chunks of the `/trace` stream: one event split over two chunks, two
/// events in one chunk, and a blank keep-alive line.
fn trace_chunks() -> Vec<String> {
    let lines: Vec<String> = trace_events().iter().map(|e| json(e) + "\n").collect();
    let (a, b) = lines[0].split_at(10);
    vec![
        a.to_owned(),
        b.to_owned(),
        "\n".to_owned(),
        format!("{}{}", lines[1], lines[2]),
    ]
}

fn serve(mut stream: UnixStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let (path, query) = req
        .target
        .split_once('?')
        .unwrap_or((req.target.as_str(), ""));
    match (req.method.as_str(), path) {
        ("GET", "/status") => respond(&mut stream, 200, &json(&status_doc())),
        ("GET", "/pods") => respond(&mut stream, 200, &json(&pods_doc())),
        ("GET", "/services") => {
            let mut doc = services_doc();
            if let Some(name) = query.strip_prefix("name=") {
                doc.services
                    .retain(|s| s.name == name || format!("{}/{}", s.namespace, s.name) == name);
                if doc.services.is_empty() {
                    respond(&mut stream, 404, &not_found(&format!("service {name}")));
                    return;
                }
            }
            respond(&mut stream, 200, &json(&doc));
        }
        ("GET", "/conns") => respond(&mut stream, 200, &json(&conns_doc())),
        ("GET", "/maps") => respond(&mut stream, 200, &json(&maps_doc())),
        ("POST", "/explain") => {
            let Ok(request) = serde_json::from_slice::<ExplainRequest>(&req.body) else {
                respond(&mut stream, 400, &not_found("valid body"));
                return;
            };
            if request.to.starts_with("nope") {
                respond(
                    &mut stream,
                    404,
                    &not_found(&format!("service {}", request.to)),
                );
                return;
            }
            // Echo what was asked, so tests see the request the CLI sent.
            let mut steps = vec![format!("from={:?} to={:?}", request.from, request.to)];
            steps.extend(
                request
                    .headers
                    .iter()
                    .map(|(n, v)| format!("header {n}={v}")),
            );
            let rejected = request.to.starts_with("ratings");
            let doc = Explanation {
                service: "default/reviews".into(),
                destination: "10.96.0.10:80".into(),
                caller: (!request.from.is_empty()).then(|| request.from.clone()),
                caller_tag: None,
                tag: Some("joint1".into()),
                tag_source: "header:x-mse-tag".into(),
                decision: (!rejected).then(|| "tagged".into()),
                candidates: vec!["10.244.0.14:8081".into()],
                endpoint: (!rejected).then(|| "10.244.0.14:8081".into()),
                reject: rejected.then(|| "no endpoint of default/ratings for tag joint1".into()),
                steps,
            };
            respond(&mut stream, 200, &json(&doc));
        }
        ("GET", "/trace") => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            for chunk in trace_chunks() {
                let _ = write!(stream, "{:x}\r\n{chunk}\r\n", chunk.len());
                let _ = stream.flush();
            }
            if query.contains("tag=end") {
                let _ = write!(stream, "0\r\n\r\n");
                return;
            }
            if query.contains("tag=cut") {
                return;
            }
            // Stream until the client goes away.
            let mut buf = [0u8; 16];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        }
        ("GET", "/broken") => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\":");
        }
        _ => respond(&mut stream, 404, &not_found("such endpoint")),
    }
}

/// A fake agent listening on a socket in a temp directory.
struct FakeAgent {
    dir: TempDir,
}

impl FakeAgent {
    fn start() -> Self {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.0.join("admin.sock")).unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                thread::spawn(move || serve(stream));
            }
        });
        Self { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("admin.sock")
    }
}

/// Parses a command line the way `main.rs` does (the node commands flattened).
#[derive(clap::Parser, Debug)]
#[command(name = "laneway")]
struct TestCli {
    #[command(subcommand)]
    command: Command,
}

fn parse(args: &[&str]) -> Command {
    TestCli::try_parse_from(std::iter::once("laneway").chain(args.iter().copied()))
        .unwrap()
        .command
}

/// Parses `args` with `--socket` pointing at `socket`, runs, returns the output.
fn exec(socket: &Path, args: &[&str]) -> Result<String, Error> {
    let mut full: Vec<&str> = args.to_vec();
    let socket = socket.to_str().unwrap();
    full.extend(["--socket", socket]);
    let command = parse(&full);
    let mut out = Vec::new();
    execute(&command, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn run_ok(agent: &FakeAgent, args: &[&str]) -> String {
    exec(&agent.socket(), args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn json_output_round_trips() {
    let agent = FakeAgent::start();
    let status: Status = serde_json::from_str(&run_ok(&agent, &["status", "-o", "json"])).unwrap();
    assert_eq!(status, status_doc());
    let pods: Pods = serde_json::from_str(&run_ok(&agent, &["pods", "--output", "json"])).unwrap();
    assert_eq!(pods, pods_doc());
    let services: Services =
        serde_json::from_str(&run_ok(&agent, &["services", "-o", "json"])).unwrap();
    assert_eq!(services, services_doc());
    let conns: Conns = serde_json::from_str(&run_ok(&agent, &["conns", "-o", "json"])).unwrap();
    assert_eq!(conns, conns_doc());
    let maps: Maps = serde_json::from_str(&run_ok(&agent, &["maps", "-o", "json"])).unwrap();
    assert_eq!(maps, maps_doc());
    let explanation: Explanation = serde_json::from_str(&run_ok(
        &agent,
        &[
            "explain",
            "--from",
            "default/client",
            "--to",
            "reviews:80",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(explanation.endpoint.as_deref(), Some("10.244.0.14:8081"));
}

#[test]
fn status_table_has_sections() {
    let agent = FakeAgent::start();
    let text = run_ok(&agent, &["status"]);
    for cell in [
        "version:",
        "0.1.0",
        "ready:",
        "yes",
        "NAME      HOOK             ATTACHED TO",
        "cgroup/connect4",
        "ENROLLED  3/1024   0.3%",
        "120ms ago (alive)",
        "file:/etc/laneway.yaml",
        "4m10s",
        "2 (3 VIP ports, 5 endpoints)",
        "2 enrolled, 1 not enrolled",
        "redirected:",
        "42",
        "7 active",
    ] {
        assert!(text.contains(cell), "{cell:?} not in\n{text}");
    }
    assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
}

#[test]
fn pods_table_shows_enrolled_and_not_enrolled() {
    let agent = FakeAgent::start();
    let text = run_ok(&agent, &["pods"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "NAMESPACE  NAME           TAG     NETNS-COOKIE  IPS"
    );
    assert_eq!(
        lines.next().unwrap(),
        "default    client         base    4097          10.244.0.10"
    );
    assert!(text.contains("joint1  4098          10.244.0.11, fd00::11"));
    assert!(
        text.contains("not enrolled\nPOD        REASON\nshop/cart  network namespace not found\n")
    );
}

#[test]
fn services_table_shows_lanes_and_states() {
    let agent = FakeAgent::start();
    let text = run_ok(&agent, &["services"]);
    assert!(
        text.contains("default/reviews  10.96.0.10, fd00:96::10\n"),
        "{text}"
    );
    assert!(text.contains("  port 80 -> 8080 (auto)\n"), "{text}");
    assert!(
        text.contains(
            "    TAG     ENDPOINT          NAME            STATE        IN-FLIGHT  WEIGHT\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("    base    10.244.0.13:8080  reviews-base    serving      2          1\n"),
        "{text}"
    );
    assert!(text.contains("terminating"), "{text}");
    assert!(
        text.contains("joint1  10.244.0.14:8081  reviews-joint1  not serving"),
        "{text}"
    );
    assert!(
        text.contains("default/ratings  10.96.0.11\n  policy: none\n  (no ports)\n"),
        "{text}"
    );

    let one = run_ok(&agent, &["services", "default/reviews"]);
    assert!(
        one.contains("default/reviews") && !one.contains("ratings"),
        "{one}"
    );

    let err = exec(&agent.socket(), &["services", "nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert_eq!(err.to_string(), "the agent answered 404: no service nope");
}

#[test]
fn external_endpoints_show_as_external_while_they_answer_else_external_down() {
    let mut e = endpoint("10.8.0.5:8080", "-", true, false);
    e.external = true;
    assert_eq!(render::endpoint_state(&e), "external");
    e.eligible = false;
    assert_eq!(render::endpoint_state(&e), "external-down");
}

#[test]
fn conns_table_uses_human_units() {
    let agent = FakeAgent::start();
    let text = run_ok(&agent, &["conns"]);
    let header = text.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "CALLER",
            "DESTINATION",
            "SERVICE",
            "ENDPOINT",
            "TAG",
            "PROTO",
            "REQS",
            "BYTES-IN",
            "BYTES-OUT",
            "AGE"
        ]
    );
    let first: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        first,
        [
            "1",
            "default/client",
            "10.96.0.10:80",
            "default/reviews",
            "10.244.0.14:8081",
            "joint1",
            "http",
            "3",
            "1.2KiB",
            "5.0MiB",
            "3.2s"
        ]
    );
    // Without a known caller, the client's address.
    let second: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(second[1], "10.244.0.99:40001");
    assert_eq!(second[10], "4m10s");
    // An HTTP/2 connection shows its open streams.
    let third = text.lines().nth(3).unwrap();
    assert!(third.contains(" h2 (7 open) "), "{third}");
}

#[test]
fn explain_sends_headers_and_prints_steps() {
    let agent = FakeAgent::start();
    let text = run_ok(
        &agent,
        &[
            "explain",
            "--from",
            "default/client",
            "--to",
            "reviews:80",
            "-H",
            "x-mse-tag:  joint1 ",
            "--header",
            "baggage: a=b:c",
        ],
    );
    assert!(
        text.contains("1. from=\"default/client\" to=\"reviews:80\"\n"),
        "{text}"
    );
    assert!(text.contains("2. header x-mse-tag=joint1\n"), "{text}");
    assert!(text.contains("3. header baggage=a=b:c\n"), "{text}");
    assert!(
        text.contains("tag:         joint1 (header:x-mse-tag)"),
        "{text}"
    );
    assert!(
        text.ends_with("=> endpoint 10.244.0.14:8081 (decision tagged)\n"),
        "{text}"
    );

    // Without --from: an unenrolled caller.
    let text = run_ok(&agent, &["explain", "--to", "ratings"]);
    assert!(text.contains("from=\"\""), "{text}");
    assert!(text.contains("not an enrolled pod"), "{text}");
    assert!(text.ends_with(
        "=> no endpoint: no endpoint of default/ratings for tag joint1 (decision none; the router answers 503)\n"
    ));

    let err = exec(&agent.socket(), &["explain", "--to", "nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("no service nope"), "{err}");
}

#[test]
fn explain_header_parsing() {
    assert_eq!(
        parse_header("x-mse-tag: joint1"),
        Ok(("x-mse-tag".into(), "joint1".into()))
    );
    assert_eq!(parse_header(" a :b:c "), Ok(("a".into(), "b:c".into())));
    assert_eq!(
        parse_header("x-empty:"),
        Ok(("x-empty".into(), String::new()))
    );
    assert!(parse_header("no-colon").unwrap_err().contains("has no ':'"));
    assert!(parse_header(": value").is_err());
    assert!(parse_header("bad name: v").is_err());

    let err = TestCli::try_parse_from(["laneway", "explain", "--to", "reviews", "-H", "x-mse-tag"])
        .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    assert_eq!(err.exit_code(), 2);
    let message = err.to_string();
    assert!(message.contains("\"x-mse-tag\" has no ':'"), "{message}");
    let err = TestCli::try_parse_from(["laneway", "explain", "--to", ""]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let err = TestCli::try_parse_from(["laneway", "explain"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn trace_stops_after_count() {
    let agent = FakeAgent::start();
    // The server keeps streaming: only --count ends the command.
    let text = run_ok(&agent, &["trace", "--count", "2"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with(
            " default/client -> default/reviews tag=joint1 (header:x-mse-tag) tagged -> 10.244.0.14:8081 200 3.2ms"
        ),
        "{text}"
    );
    assert!(
        lines[1].ends_with(" - -> default/reviews tag=- (none) base -> 10.244.0.13:8080 L4 850µs"),
        "{text}"
    );
}

#[test]
fn trace_json_prints_ndjson() {
    let agent = FakeAgent::start();
    let text = run_ok(
        &agent,
        &[
            "trace",
            "--service",
            "default/reviews",
            "--tag",
            "end",
            "-o",
            "json",
        ],
    );
    let events: Vec<TraceEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events, trace_events());

    let text = run_ok(&agent, &["trace", "--tag", "end"]);
    assert!(
        text.lines().nth(2).unwrap().ends_with(
            "default/client -> default/ratings tag=gray (baggage) none -> - 503 120µs error: no endpoint for tag gray"
        ),
        "{text}"
    );
    // A stream cut off mid-way (no last chunk) is an error.
    let err = exec(&agent.socket(), &["trace", "--tag", "cut"]).unwrap_err();
    assert!(matches!(err, Error::StreamBroken(_)), "{err:?}");
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn maps_table_decodes_each_map() {
    let agent = FakeAgent::start();
    let text = run_ok(&agent, &["maps"]);
    for cell in [
        "ENROLLED (1 entries)",
        "  NETNS-COOKIE  POD-ID  POD\n  4097          1       default/client\n",
        "SERVICES (1 entries)",
        "10.96.0.10:80  1           default/reviews",
        "ROUTER[0]",
        "mark:       0x4c57",
        "ORIG_BY_COOKIE (1 entries)",
        "777",
        "ORIG_BY_CONN (0 entries)\n  CLIENT  ROUTER  DESTINATION  NETNS-COOKIE\n",
        "LANE_ENDPOINTS (1 entries)",
        "10.96.0.10:80  2 (joint1)  10.244.0.14:8080, 10.244.0.16:8080",
        "STATS",
        "redirected:        42",
    ] {
        assert!(text.contains(cell), "{cell:?} not in\n{text}");
    }
}

#[test]
fn missing_socket_means_not_running() {
    let dir = TempDir::new();
    let socket = dir.0.join("admin.sock");
    let err = exec(&socket, &["status"]).unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert_eq!(
        err.to_string(),
        format!(
            "laneway agent is not running (no admin socket at {}): start it, or pass --socket",
            socket.display()
        )
    );

    // A stale socket file nobody listens on.
    drop(UnixListener::bind(&socket).unwrap());
    let err = exec(&socket, &["pods"]).unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(
        err.to_string().starts_with("laneway agent is not running"),
        "{err}"
    );
}

#[test]
fn permission_denied_exits_4() {
    let path = Path::new("/run/laneway/admin.sock");
    let err = client::connect_error(path, io::Error::from(io::ErrorKind::PermissionDenied));
    assert_eq!(err.exit_code(), 4);
    assert_eq!(
        err.to_string(),
        "permission denied on /run/laneway/admin.sock: the admin socket is root only; run with sudo"
    );
    let err = client::connect_error(path, io::Error::from(io::ErrorKind::NotFound));
    assert_eq!(err.exit_code(), 3);
    let err = client::connect_error(path, io::Error::from(io::ErrorKind::ConnectionRefused));
    assert_eq!(err.exit_code(), 3);
    let err = client::connect_error(path, io::Error::from(io::ErrorKind::InvalidInput));
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn malformed_answers_are_errors() {
    let agent = FakeAgent::start();
    let err = Client::new(&agent.socket())
        .get::<Status>("/broken")
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn options_and_defaults() {
    let command = parse(&["status"]);
    let Command::Status { common } = command else {
        panic!("not status");
    };
    assert_eq!(common.format.output, Output::Table);
    // The env var may be set around the tests; the default is the documented path.
    if std::env::var_os("LANEWAY_ADMIN_SOCKET").is_none() {
        assert_eq!(common.socket, PathBuf::from(DEFAULT_SOCKET));
    }
    assert!(TestCli::try_parse_from(["laneway", "trace", "--count", "0"]).is_err());
    assert!(TestCli::try_parse_from(["laneway", "pods", "-o", "yaml"]).is_err());
    // Help renders (clap's debug assertions check the definitions).
    use clap::CommandFactory;
    TestCli::command().debug_assert();
    let help = TestCli::command()
        .find_subcommand_mut("conns")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(help.contains("BYTES-OUT"), "{help}");
    assert!(help.contains("Exit codes:"), "{help}");
}

#[test]
fn preflight_document() {
    let command = parse(&["preflight", "-o", "json"]);
    let mut out = Vec::new();
    let result = execute(&command, &mut out);
    let doc: crate::admin::api::Preflight = serde_json::from_slice(&out).unwrap();
    let kernel = doc.checks.iter().find(|c| c.name == "kernel").unwrap();
    assert_eq!(kernel.result, "pass", "{kernel:?}");
    let cgroup = doc.checks.iter().find(|c| c.name == "cgroup v2").unwrap();
    assert_eq!(cgroup.result, "pass", "{cgroup:?}");
    // Exit 1 exactly when a check failed.
    let failed = doc.checks.iter().any(|c| c.result == "fail");
    match result {
        Ok(()) => assert!(!failed),
        Err(e) => {
            assert!(failed);
            assert!(matches!(e, Error::PreflightFailed { .. }));
            assert_eq!(e.exit_code(), 1);
        }
    }

    let command = parse(&["preflight"]);
    let mut out = Vec::new();
    let _ = execute(&command, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("RESULT  CHECK"), "{text}");
    assert!(text.contains("pass    kernel"), "{text}");
}

#[test]
fn a_grpc_call_shows_its_grpc_status_in_trace() {
    let mut event = trace_events().remove(0);
    event.grpc_status = Some(14);
    let line = render::trace_line(&event);
    assert!(line.contains(" -> 10.244.0.14:8081 200/grpc-14 "), "{line}");
}

#[test]
fn strict_lane_rejections_and_denials_are_named_alike_in_trace_explain_and_help() {
    let [_, _, mut event] = trace_events().try_into().unwrap();
    event.decision = Some("strict-reject".into());
    let line = render::trace_line(&event);
    assert!(line.contains(" strict-reject -> - 503 "), "{line}");
    event.decision = None;
    let line = render::trace_line(&event);
    assert!(line.contains(" none -> - 503 "), "no decision: {line}");

    let strict = Explanation {
        service: "default/reviews".into(),
        destination: "10.96.0.10:80".into(),
        caller: None,
        caller_tag: None,
        tag: Some("gray".into()),
        tag_source: "header:x-mse-tag".into(),
        decision: Some("strict-reject".into()),
        candidates: Vec::new(),
        endpoint: None,
        reject: Some("lane gray of service default/reviews has no serving endpoint".into()),
        steps: Vec::new(),
    };
    let text = render::explanation(&strict);
    assert!(
        text.ends_with(
            "=> no endpoint: lane gray of service default/reviews has no serving endpoint \
             (decision strict-reject; the router answers 503)\n"
        ),
        "{text}"
    );
    let denied = Explanation {
        decision: Some("denied".into()),
        reject: Some("caller default/client may not call service default/reviews (allow-from namespaces=shop): its namespace default is not listed".into()),
        ..strict
    };
    assert!(
        render::explanation(&denied).ends_with(
            "=> denied: caller default/client may not call service default/reviews \
             (allow-from namespaces=shop): its namespace default is not listed (the router answers 403)\n"
        ),
        "{}",
        render::explanation(&denied)
    );
    use clap::CommandFactory;
    for command in ["trace", "explain"] {
        let help = TestCli::command()
            .find_subcommand_mut(command)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("strict-reject"), "{help}");
        assert!(help.contains("denied"), "{help}");
        assert!(!help.contains("rejected"), "{help}");
    }
}

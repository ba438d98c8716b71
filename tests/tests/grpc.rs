//! gRPC over HTTP/2, every stream in its lane: a real tonic client and
//! server (`laneway_tests::grpc`) on the netns node, calling `reviews-grpc`,
//! the gRPC twin of the standard `reviews` (same pods, same lanes). Each
//! call of one connection is routed by its own metadata, as each request
//! of an HTTP/1.1 connection is. The suites that must hold however the
//! pods are steered run in socket and TC mode, as `grpc::<mode>::<test>`.
//!
//! Run as root through `cargo xtask test grpc`.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use futures::stream;
use laneway_tests::{
    Agent, Node, Scenario,
    grpc::{self, EchoClient, EchoReply, EchoRequest, EchoServer, GrpcStandard, replies, tagged},
    in_modes, kube, shares,
    standard::{self, Mode},
};
use tonic::Code;

/// Runs a test's calls on a client runtime, failing rather than hanging if
/// they have not ended within a minute.
fn run(calls: impl Future<Output = Result<()>>) -> Result<()> {
    grpc::runtime()?.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), calls)
            .await
            .context("the calls did not end within 60 s")?
    })
}

/// Waits (up to 5 s) until `holds`, e.g. a server's count.
async fn until(what: &str, holds: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds() {
        ensure!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Checks that every reply came through the router from `endpoint`, which
/// saw `seen_tag`.
fn answered_by(what: &str, replies: &[EchoReply], endpoint: &str, seen_tag: &str) {
    assert!(!replies.is_empty(), "{what}: no reply");
    for reply in replies {
        assert_eq!(
            (
                reply.endpoint.as_str(),
                reply.seen_tag.as_str(),
                reply.routed()
            ),
            (endpoint, seen_tag, true),
            "{what}: {reply:?}"
        );
    }
}

/// A call's tag, the endpoint that answers it and the tag that endpoint sees.
type Lane = (Option<&'static str>, &'static str, &'static str);
const JOINT1: Lane = (Some("joint1"), "reviews-joint1", "joint1");
const GRAY: Lane = (Some("gray"), "reviews-gray", "gray");
const UNTAGGED: Lane = (None, "reviews-base", "-");
/// No joint2 endpoint: base, and the tag travels on.
const JOINT2: Lane = (Some("joint2"), "reviews-base", "joint2");

/// One unary call per lane on `client`'s connection, each answered in its lane.
async fn unary_calls_land(client: &mut EchoClient, what: &str, lanes: &[Lane]) -> Result<()> {
    for (tag, endpoint, seen) in lanes {
        let reply = client.unary(tagged(ask(), *tag)).await?.into_inner();
        answered_by(what, &[reply], endpoint, seen);
    }
    Ok(())
}

fn ask() -> EchoRequest {
    EchoRequest {
        payload: b"ping".to_vec(),
        ..EchoRequest::default()
    }
}

fn each_kind_of_call_lands_in_its_lane(mode: Mode) -> Result<()> {
    let g = GrpcStandard::start(mode, |_| {})?;
    let pods = g.standard.pods;
    run(async {
        // One connection: each call is routed by its own metadata.
        let mut client = g.client(pods.client)?;
        for (tag, endpoint, seen) in [JOINT1, UNTAGGED, JOINT1] {
            let unary = client.unary(tagged(ask(), tag)).await?.into_inner();
            // The router's HTTP/2 connection upstream is the caller pod's.
            let caller = g.standard.node.pod(pods.client).ip.to_string();
            assert_eq!(unary.peer, caller, "the endpoint sees the calling pod");
            answered_by("unary", &[unary], endpoint, seen);
            let three = EchoRequest {
                replies: 3,
                ..ask()
            };
            let streamed = client.server_stream(tagged(three, tag)).await?;
            let streamed = replies(streamed).await?;
            assert_eq!(streamed.len(), 3);
            answered_by("server streaming", &streamed, endpoint, seen);
            let requests = stream::iter(vec![ask(); 3]);
            let gathered = client.client_stream(tagged(requests, tag)).await?;
            let gathered = gathered.into_inner();
            assert_eq!(gathered.sequence, 3, "every request arrived");
            answered_by("client streaming", &[gathered], endpoint, seen);
            let requests = stream::iter(vec![ask(); 3]);
            let bidi = replies(client.bidi(tagged(requests, tag)).await?).await?;
            assert_eq!(bidi.len(), 3);
            answered_by("bidirectional", &bidi, endpoint, seen);
        }
        assert_eq!(client.connections(), 1);

        // The caller pod's own tag is the lane of a call without one.
        let mut caller = g.client(pods.client_joint1)?;
        let reply = caller.unary(tagged(ask(), None)).await?.into_inner();
        answered_by("lane inheritance", &[reply], "reviews-joint1", "joint1");
        Ok(())
    })
}

fn a_hundred_concurrent_streams_on_one_connection_each_stay_in_their_lane(
    mode: Mode,
) -> Result<()> {
    let g = GrpcStandard::start(mode, |_| {})?;
    run(async {
        let mut client = g.client(g.standard.pods.client)?;
        // The connection is up before the burst (hyper's pool may open a
        // second one for calls that all start before the first is up).
        unary_calls_land(&mut client, "first call", &[UNTAGGED]).await?;
        let lanes = [JOINT1, GRAY, UNTAGGED, JOINT2];
        // Each call lasts 150 ms (unary) or 300 ms (two streamed replies):
        // all hundred are open at once.
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let mut client = client.clone();
                let (tag, _, _) = lanes[i % lanes.len()];
                let request = tagged(
                    EchoRequest {
                        replies: 2,
                        sleep_ms: 150,
                        ..ask()
                    },
                    tag,
                );
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        client.unary(request).await.map(|r| vec![r.into_inner()])
                    } else {
                        replies(client.server_stream(request).await?).await
                    }
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let (_, endpoint, seen) = lanes[i % lanes.len()];
            answered_by(&format!("call {i}"), &call.await??, endpoint, seen);
        }
        assert_eq!(client.connections(), 1, "all on one connection");
        Ok(())
    })
}

fn sixteen_mib_messages_and_a_slow_reader_get_through_whole(mode: Mode) -> Result<()> {
    let g = GrpcStandard::start(mode, |_| {})?;
    const SIXTEEN_MIB: usize = 16 << 20;
    run(async {
        let mut client = g.client(g.standard.pods.client)?;
        let big = grpc::pattern(SIXTEEN_MIB);
        let request = EchoRequest {
            payload: big.clone(),
            reply_bytes: SIXTEEN_MIB as u32,
            ..ask()
        };
        let reply = client
            .unary(tagged(request, Some("joint1")))
            .await?
            .into_inner();
        assert_eq!(
            (reply.received_bytes, reply.received_digest),
            (big.len() as u64, grpc::digest(&big)),
            "the server got the 16 MiB whole"
        );
        assert!(reply.payload == big, "the client got 16 MiB whole");
        answered_by(
            "16 MiB",
            &[EchoReply {
                payload: Vec::new(),
                ..reply
            }],
            "reviews-joint1",
            "joint1",
        );

        // 64 MiB in 128 replies, read slowly: all of it arrives, in order,
        // and the router holds no more than flow control lets it.
        let rss_before = g.standard.agent.rss_kib();
        let mut peak = rss_before;
        let request = EchoRequest {
            replies: 128,
            reply_bytes: 512 << 10,
            ..ask()
        };
        let mut stream = client
            .server_stream(tagged(request, Some("joint1")))
            .await?
            .into_inner();
        let chunk = grpc::pattern(512 << 10);
        let mut sequence = 0;
        while let Some(reply) = stream.message().await? {
            assert_eq!(reply.sequence, sequence);
            assert!(reply.payload == chunk, "reply {sequence} is whole");
            assert_eq!(reply.endpoint, "reviews-joint1");
            sequence += 1;
            peak = peak.max(g.standard.agent.rss_kib());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sequence, 128, "every reply arrived");
        assert!(
            peak < rss_before + 24 * 1024,
            "the router buffered for the slow reader: {rss_before} KiB -> {peak} KiB"
        );
        Ok(())
    })
}

fn cancellation_and_deadlines_reach_the_server(mode: Mode) -> Result<()> {
    let g = GrpcStandard::start(mode, |_| {})?;
    let joint1 = g.server("reviews-joint1");
    run(async {
        let client = g.client(g.standard.pods.client)?;
        let sleepy = EchoRequest {
            sleep_ms: 20_000,
            ..ask()
        };

        // The client gives up on a unary call: the server's handler ends.
        let mut caller = client.clone();
        let request = tagged(sleepy.clone(), Some("joint1"));
        let call = tokio::spawn(async move { caller.unary(request).await });
        until("the call reached joint1", || joint1.calls() == 1).await?;
        call.abort();
        until("joint1 saw the cancellation", || joint1.cancelled() == 1).await?;

        // The client drops a server stream after its first reply.
        let request = EchoRequest {
            replies: 100,
            sleep_ms: 50,
            ..ask()
        };
        let mut caller = client.clone();
        let mut stream = caller
            .server_stream(tagged(request, Some("joint1")))
            .await?
            .into_inner();
        assert!(stream.message().await?.is_some());
        drop(stream);
        until("joint1 saw the stream cancelled", || {
            joint1.cancelled() == 2
        })
        .await?;

        // A deadline shorter than the server's sleep: the path enforces it
        // (the server ignores it), and the server's handler ends too.
        let mut request = tagged(sleepy, Some("joint1"));
        request.set_timeout(Duration::from_millis(300));
        let mut caller = client.clone();
        let status = caller
            .unary(request)
            .await
            .expect_err("answered after its deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        until("joint1 saw the expired call end", || {
            joint1.cancelled() == 3
        })
        .await?;
        Ok(())
    })
}

in_modes! {
    [socket => Socket, tc => Tc]: [
        each_kind_of_call_lands_in_its_lane,
        a_hundred_concurrent_streams_on_one_connection_each_stay_in_their_lane,
        sixteen_mib_messages_and_a_slow_reader_get_through_whole,
        cancellation_and_deadlines_reach_the_server,
        takeovers_and_sigterm_under_grpc_load_fail_no_call,
        a_strict_lane_without_endpoints_answers_unavailable_naming_service_and_lane,
        an_endpoint_turning_terminating_finishes_its_open_stream_and_gets_no_new_call,
    ],
}

fn a_strict_lane_without_endpoints_answers_unavailable_naming_service_and_lane(
    mode: Mode,
) -> Result<()> {
    let g = GrpcStandard::start(mode, |svc| {
        svc.policy = Some("{lanes: 'joint2=strict'}".into());
    })?;
    run(async {
        let mut client = g.client(g.standard.pods.client)?;
        let status = client
            .unary(tagged(ask(), Some("joint2")))
            .await
            .expect_err("a strict lane without endpoints answered");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("default/reviews-grpc") && message.contains("joint2"),
            "{message}"
        );
        // Counted by gRPC status, as operators alert on it.
        let metrics = laneway_tests::admin::scrape(&g.standard.node)?;
        let unavailable = "laneway_grpc_responses_total{service=\"default/reviews-grpc\",\
                           tag=\"joint2\",grpc_status=\"14\"} 1";
        assert!(metrics.contains(unavailable), "{metrics}");
        // Lanes are permissive unless named strict; the connection serves on.
        let reply = client.unary(tagged(ask(), Some("joint3"))).await?;
        answered_by(
            "permissive",
            &[reply.into_inner()],
            "reviews-base",
            "joint3",
        );
        Ok(())
    })
}

fn an_endpoint_turning_terminating_finishes_its_open_stream_and_gets_no_new_call(
    mode: Mode,
) -> Result<()> {
    let g = GrpcStandard::start(mode, |_| {})?;
    let joint1 = g.server("reviews-joint1");
    run(async {
        let mut client = g.client(g.standard.pods.client)?;
        let request = EchoRequest {
            replies: 20,
            sleep_ms: 100,
            ..ask()
        };
        let answer = client
            .server_stream(tagged(request, Some("joint1")))
            .await?;
        let routed = grpc::by_router(&answer);
        let mut stream = answer.into_inner();
        let first = stream.message().await?.context("a first reply")?;
        assert_eq!(first.endpoint, "reviews-joint1");

        // The twin's joint1 endpoint turns terminating (reviews' stays).
        g.standard.agent.rewrite_config(|text| {
            let (head, twin) = text
                .split_once(&format!("name: {}\n", grpc::TWIN))
                .expect("the twin is in the config");
            let twin = twin.replace(
                "name: reviews-joint1, tag: joint1}",
                "name: reviews-joint1, tag: joint1, terminating: true}",
            );
            format!("{head}name: {}\n{twin}", grpc::TWIN)
        })?;
        let calls_before = joint1.calls();
        for _ in 0..10 {
            let reply = client.unary(tagged(ask(), Some("joint1"))).await?;
            answered_by(
                "after terminating",
                &[reply.into_inner()],
                "reviews-base",
                "joint1",
            );
        }
        assert_eq!(
            joint1.calls(),
            calls_before,
            "no new call on the terminating endpoint"
        );

        let rest = grpc::rest_of(stream, routed).await?;
        assert_eq!(rest.len(), 19, "the open stream finished");
        answered_by("the open stream", &rest, "reviews-joint1", "joint1");
        assert_eq!(joint1.cancelled(), 0);
        Ok(())
    })
}

fn takeovers_and_sigterm_under_grpc_load_fail_no_call(mode: Mode) -> Result<()> {
    let mut g = GrpcStandard::start(mode, |_| {})?;
    let config = g.standard.agent.config.clone();
    let client = g.standard.node.pod(g.standard.pods.client);
    let vip = g.vip()?;
    let node = &g.standard.node;
    let agent = &mut g.standard.agent;
    let load = grpc::under_load(client, vip, || {
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(400));
            // A new agent takes over while the old one serves.
            let new = Agent::start_with(node, config.clone())?;
            let mut old = std::mem::replace(agent, new);
            let status = old.wait_exit(Duration::from_secs(15))?;
            ensure!(status.success(), "round {round}: {status}\n{}", old.log());
        }
        std::thread::sleep(Duration::from_millis(400));
        // SIGTERM: the agent drains, then a new one starts.
        let status = agent.terminate()?;
        ensure!(status.success(), "{status}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
        *agent = Agent::start_with(node, config.clone())?;
        std::thread::sleep(Duration::from_millis(400));
        Ok(())
    })?;
    assert_eq!(load.failed, 0, "{load:?}");
    let taken: u64 = g.servers.iter().map(EchoServer::calls).sum();
    assert_eq!(
        taken, load.ok,
        "each call reached a server once (only calls no server took were retried): {load:?}"
    );
    assert!(load.ok > 200, "the load ran: {load:?}");
    assert!(
        load.ok - load.direct > 100,
        "the router served the calls between restarts: {load:?}"
    );
    Ok(())
}

/// `n` untagged calls over four connections, call `i` with the metadata
/// `metadata(i)` gives; the endpoint that answered each.
async fn spread(
    g: &GrpcStandard,
    n: usize,
    metadata: impl Fn(usize) -> Option<(&'static str, String)>,
) -> Result<Vec<String>> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(g.client(g.standard.pods.client)?);
    }
    let mut endpoints = Vec::new();
    for i in 0..n {
        let mut request = tagged(ask(), None);
        if let Some((key, value)) = metadata(i) {
            request.metadata_mut().insert(key, value.parse()?);
        }
        let reply = clients[i % 4].unary(request).await?.into_inner();
        ensure!(reply.routed(), "call {i} went the direct way");
        endpoints.push(reply.endpoint);
    }
    Ok(endpoints)
}

#[test]
fn a_ten_percent_canary_gets_ten_percent_of_untagged_calls() -> Result<()> {
    let g = GrpcStandard::start(Mode::Socket, |svc| {
        svc.policy = Some("{canary: gray=10}".into());
    })?;
    run(async {
        let endpoints = spread(&g, 2000, |_| None).await?;
        let on = |name: &str| endpoints.iter().filter(|e| *e == name).count();
        let gray = on("reviews-gray");
        assert!(
            shares::plausible(2000, 0.10).contains(&gray),
            "gray got {gray} of 2000"
        );
        assert_eq!(on("reviews-base"), 2000 - gray, "the rest on base");
        Ok(())
    })
}

#[test]
fn a_sticky_key_keeps_each_users_calls_on_one_side() -> Result<()> {
    let g = GrpcStandard::start(Mode::Socket, |svc| {
        svc.policy = Some("{canary: gray=30, sticky: 'header:x-user-id'}".into());
    })?;
    run(async {
        // 100 users, five calls each, spread over four connections.
        let user = |call: usize| call / 5;
        let endpoints = spread(&g, 500, |i| {
            Some(("x-user-id", format!("user-{}", user(i))))
        })
        .await?;
        let mut gray_users = 0;
        for (id, calls) in endpoints.chunks(5).enumerate() {
            let sides: std::collections::BTreeSet<&String> = calls.iter().collect();
            assert_eq!(sides.len(), 1, "user-{id} flipped between {sides:?}");
            gray_users += usize::from(calls[0] == "reviews-gray");
        }
        // Different keys do split.
        assert!(
            shares::plausible(100, 0.30).contains(&gray_users),
            "{gray_users} of 100 users on gray"
        );
        Ok(())
    })
}

#[test]
fn calls_to_the_ipv6_vip_land_in_their_lanes() -> Result<()> {
    let g = GrpcStandard::start(Mode::Socket, |_| {})?;
    run(async {
        let pod = g.standard.node.pod(g.standard.pods.client);
        let mut client = EchoClient::new(pod, g.vip6()?)?;
        unary_calls_land(&mut client, "IPv6", &[JOINT1, UNTAGGED, GRAY]).await
    })
}

#[test]
fn a_port_declared_grpc_in_the_static_file_routes_each_call() -> Result<()> {
    let g = GrpcStandard::start(Mode::Socket, |svc| svc.protocol = "grpc")?;
    run(async {
        let mut client = g.client(g.standard.pods.client)?;
        unary_calls_land(&mut client, "declared grpc", &[GRAY, UNTAGGED, JOINT1]).await?;
        Ok(())
    })
}

#[test]
fn a_port_with_app_protocol_grpc_routes_each_call_in_kube_mode() -> Result<()> {
    let (node, scenario, pods, _backends) = standard::prepare()?;
    let twin = grpc::reviews_twin(&scenario.services[0], "auto")?;
    let _servers = grpc::serve(&node, &twin)?;
    let (mut service, _) = kube::service(&node, &twin, "backends");
    let ports = service.spec.as_mut().and_then(|s| s.ports.as_mut());
    ports.context("the Service has ports")?[0].app_protocol = Some("grpc".into());
    let scenario = Scenario {
        services: vec![twin],
        ..scenario
    };
    let cluster = kube::reviews_cluster(&node, &scenario, &pods, service)?;
    let _agent = Agent::start_kube(&node, &scenario, &cluster)?;
    run(async {
        let mut client = EchoClient::new(node.pod(pods.client), Node::vip(&scenario.services[0]))?;
        unary_calls_land(&mut client, "appProtocol grpc", &[JOINT1, UNTAGGED, GRAY]).await?;
        Ok(())
    })
}

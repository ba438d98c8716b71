//! The HTTP/2 engine end to end over loopback: real `h2` clients and
//! backends around the router's engine (the test router of
//! `proxy::tests` decides).

use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use h2::{RecvStream, SendStream, client::SendRequest, server::SendResponse};
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::{Instant, sleep, timeout},
};

use crate::proxy::{
    Protocol, ProxyConfig, Route,
    tests::{Proxy, TestRoutes, WAIT, dead_addr, test_cfg, to, to_tagged},
};

// ---------------------------------------------------------------------------
// Test backend

/// Serves one stream: the request, its response, and the backend's
/// connection number (from 1).
pub(crate) type Handler = Arc<
    dyn Fn(Request<RecvStream>, SendResponse<Bytes>, usize) -> BoxFuture<'static, ()> + Send + Sync,
>;

pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
}

impl Backend {
    pub(crate) async fn start(max_concurrent_streams: Option<u32>, handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(AtomicUsize::new(0));
        let (c, s) = (conns.clone(), streams.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let id = c.fetch_add(1, Ordering::SeqCst) + 1;
                let (handler, streams) = (handler.clone(), s.clone());
                tokio::spawn(async move {
                    let mut builder = h2::server::Builder::new();
                    if let Some(max) = max_concurrent_streams {
                        builder.max_concurrent_streams(max);
                    }
                    let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        streams.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(handler(req, respond, id));
                    }
                });
            }
        });
        Backend {
            addr,
            conns,
            streams,
        }
    }

    /// Answers 200 after reading the whole request: `x-backend`, `x-conn`,
    /// `x-seen-tag` (the tag header it got), the request body back, and
    /// the request's trailers back with `grpc-status: 0`.
    pub(crate) async fn echo(name: &'static str) -> Backend {
        Backend::start(
            None,
            Arc::new(move |req, respond, conn| Box::pin(echo(name, req, respond, conn))),
        )
        .await
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait_streams(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.streams.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "backend expected {n} streams");
            sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn echo(name: &str, req: Request<RecvStream>, mut respond: SendResponse<Bytes>, conn: usize) {
    let (parts, mut body) = req.into_parts();
    let Some((data, trailers)) = read_all(&mut body).await else {
        return;
    };
    let seen_tag = parts
        .headers
        .get("x-mse-tag")
        .cloned()
        .unwrap_or(HeaderValue::from_static("-"));
    let response = Response::builder()
        .header("x-backend", name)
        .header("x-conn", conn)
        .header("x-seen-tag", seen_tag)
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    let _ = send.send_data(data.into(), false);
    let mut trailers = trailers.unwrap_or_default();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

/// A handler that waits until `release` turns true, then echoes.
pub(crate) fn held(release: watch::Receiver<bool>) -> Handler {
    Arc::new(move |req, respond, conn| {
        let mut release = release.clone();
        Box::pin(async move {
            let _ = release.wait_for(|r| *r).await;
            echo("held", req, respond, conn).await;
        })
    })
}

/// The whole body (releasing its window as it goes) and the trailers;
/// `None` if the stream failed.
async fn read_all(body: &mut RecvStream) -> Option<(Vec<u8>, Option<HeaderMap>)> {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.ok()?;
    Some((data, trailers))
}

/// The reason the backend recorded in `seen` for its stream's reset.
async fn upstream_reset(seen: &Mutex<Option<h2::Reason>>) -> h2::Reason {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(reason) = *seen.lock().unwrap() {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream stream was not reset"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Test client

pub(crate) async fn client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn request(path: &str, headers: &[(&'static str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri(format!("http://svc{path}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap()
}

pub(crate) struct Answer {
    pub(crate) head: Response<()>,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.head
            .headers()
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn trailer(&self, name: &str) -> &str {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .map_or("", |v| v.to_str().unwrap())
    }
}

/// Send a request without a body and read the whole answer.
pub(crate) async fn get(
    send: &SendRequest<Bytes>,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Answer {
    let mut send = send.clone().ready().await.unwrap();
    let (response, _) = send.send_request(request(path, headers), true).unwrap();
    timeout(WAIT, answer(response))
        .await
        .expect("answer in time")
        .expect("a complete answer")
}

async fn answer(response: h2::client::ResponseFuture) -> Result<Answer, h2::Error> {
    let (head, mut body) = response.await?.into_parts();
    let (body, trailers) = read_all(&mut body)
        .await
        .ok_or_else(|| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
    Ok(Answer {
        head: Response::from_parts(head, ()),
        body,
        trailers,
    })
}

/// Sends `data` as the stream's capacity allows, counting what was sent.
async fn send_body(send: &mut SendStream<Bytes>, data: &[u8], sent: &AtomicU64) {
    for chunk in data.chunks(16 * 1024) {
        send.reserve_capacity(chunk.len());
        let mut left = Bytes::copy_from_slice(chunk);
        while !left.is_empty() {
            let n = poll_fn(|cx| send.poll_capacity(cx))
                .await
                .expect("stream open")
                .expect("capacity");
            let piece = left.split_to(n.min(left.len()));
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
            send.send_data(piece, false).unwrap();
        }
    }
}

fn by_tag(a: SocketAddr, b: SocketAddr) -> TestRoutes {
    TestRoutes::new(move |r, _| match r.header("x-mse-tag") {
        Some(b"a") => to_tagged(a, Some("lane-a"), None),
        _ => to_tagged(b, Some("lane-b"), Some("explained")),
    })
}

fn cfg() -> ProxyConfig {
    test_cfg()
}

/// A proxy sending every request to `endpoint`, with the protocol sniffed.
async fn proxy_to(endpoint: SocketAddr, cfg: ProxyConfig) -> Proxy {
    Proxy::start(
        cfg,
        TestRoutes::new(move |_, _| to(endpoint)),
        Protocol::Sniff,
    )
    .await
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_stream_of_one_connection_goes_to_its_own_lane() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = Proxy::start(cfg(), by_tag(a.addr, b.addr), Protocol::Sniff).await;
    let send = client(proxy.addr).await;
    let calls = (0..40).map(|i| {
        let send = send.clone();
        async move {
            let tag = if i % 2 == 0 { "a" } else { "b" };
            let answer = get(&send, &format!("/{i}"), &[("x-mse-tag", tag)]).await;
            (tag, answer)
        }
    });
    for (tag, answer) in futures::future::join_all(calls).await {
        assert_eq!(answer.head.status(), 200);
        assert_eq!(answer.header("x-backend"), tag, "stream on its lane");
        assert_eq!(
            answer.header("x-seen-tag"),
            format!("lane-{tag}"),
            "the resolved tag replaces the client's upstream"
        );
        let explained = if tag == "b" { "explained" } else { "" };
        assert_eq!(answer.header("x-laneway-route"), explained);
    }
    assert_eq!(
        (a.conns(), b.conns()),
        (1, 1),
        "streams share upstream connections"
    );
    let outcomes = proxy.outcomes(40).await;
    assert!(outcomes.iter().all(|o| o.status == 200 && !o.by_router));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_and_streams_at_once_on_a_multi_thread_runtime() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let proxy = Proxy::start(cfg(), by_tag(a.addr, b.addr), Protocol::Sniff).await;
    let clients = (0..8).map(|c| {
        let addr = proxy.addr;
        tokio::spawn(async move {
            let send = client(addr).await;
            let calls = (0..50).map(|i| {
                let send = send.clone();
                async move {
                    let tag = if (c + i) % 3 == 0 { "a" } else { "b" };
                    let body = format!("{c}-{i}");
                    let mut s = send.ready().await.unwrap();
                    let (response, mut req) = s
                        .send_request(request("/", &[("x-mse-tag", tag)]), false)
                        .unwrap();
                    req.send_data(Bytes::from(body.clone()), true).unwrap();
                    let answer = timeout(WAIT, answer(response)).await.unwrap().unwrap();
                    assert_eq!(answer.header("x-backend"), tag);
                    assert_eq!(answer.body, body.as_bytes(), "each stream its own body");
                }
            });
            futures::future::join_all(calls).await;
        })
    });
    for c in futures::future::join_all(clients).await {
        c.unwrap();
    }
    assert_eq!(proxy.outcomes(400).await.len(), 400);
}

#[tokio::test]
async fn a_declared_http_port_serves_h2c_prior_knowledge_too() {
    let a = Backend::echo("a").await;
    let proxy = Proxy::start(
        cfg(),
        TestRoutes::new(move |_, _| to(a.addr)),
        Protocol::Http,
    )
    .await;
    let answer = get(&client(proxy.addr).await, "/", &[]).await;
    assert_eq!(answer.header("x-backend"), "a");
}

#[tokio::test]
async fn trailers_pass_both_ways_and_the_grpc_status_is_observed() {
    let a = Backend::echo("a").await;
    let proxy = Proxy::start(
        cfg(),
        TestRoutes::new(move |_, _| to(a.addr)),
        Protocol::Http2,
    )
    .await;
    let mut send = client(proxy.addr).await.ready().await.unwrap();
    let (response, mut body) = send
        .send_request(
            request("/svc.Echo/Say", &[("content-type", "application/grpc")]),
            false,
        )
        .unwrap();
    body.send_data(Bytes::from_static(b"\0\0\0\0\x02hi"), false)
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    body.send_trailers(trailers).unwrap();
    let answer = timeout(WAIT, answer(response)).await.unwrap().unwrap();
    assert_eq!(answer.body, b"\0\0\0\0\x02hi");
    assert_eq!(
        answer.trailer("x-checksum"),
        "abc",
        "request trailers reached upstream"
    );
    assert_eq!(
        answer.trailer("grpc-status"),
        "0",
        "response trailers reached the client"
    );
    assert_eq!(proxy.outcomes(1).await[0].grpc_status, Some(0));
}

#[tokio::test]
async fn a_client_reset_resets_the_upstream_stream_with_the_same_reason() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let backend = Backend::start(
        None,
        Arc::new(move |req, _respond, _| {
            let s = s.clone();
            Box::pin(async move {
                let mut body = req.into_body();
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(c) => {
                            let _ = body.flow_control().release_capacity(c.len());
                        }
                        Err(e) => {
                            *s.lock().unwrap() = e.reason();
                            return;
                        }
                    }
                }
            })
        }),
    )
    .await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let mut send = client(proxy.addr).await.ready().await.unwrap();
    let (_response, mut body) = send.send_request(request("/upload", &[]), false).unwrap();
    body.send_data(Bytes::from_static(b"part"), false).unwrap();
    backend.wait_streams(1).await;
    body.send_reset(h2::Reason::ENHANCE_YOUR_CALM);
    assert_eq!(upstream_reset(&seen).await, h2::Reason::ENHANCE_YOUR_CALM);
    assert_eq!(proxy.outcomes(1).await[0].status, 499, "client gone");
}

#[tokio::test]
async fn a_client_reset_during_the_response_reaches_the_upstream_with_its_reason() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let backend = Backend::start(
        None,
        Arc::new(move |_req, mut respond, _| {
            let s = s.clone();
            Box::pin(async move {
                // A server stream that never ends by itself.
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                let reset = loop {
                    let _ = send.send_data(Bytes::from_static(b"tick"), false);
                    let tick = sleep(Duration::from_millis(10));
                    tokio::select! {
                        reset = poll_fn(|cx| send.poll_reset(cx)) => break reset,
                        () = tick => {}
                    }
                };
                *s.lock().unwrap() = reset.ok();
            })
        }),
    )
    .await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let mut send = client(proxy.addr).await.ready().await.unwrap();
    // A bidirectional call: the request stays open while the response flows.
    let (response, mut request_body) = send.send_request(request("/watch", &[]), false).unwrap();
    let (_, mut body) = timeout(WAIT, response).await.unwrap().unwrap().into_parts();
    let first = timeout(WAIT, body.data()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"tick");
    request_body.send_reset(h2::Reason::ENHANCE_YOUR_CALM);
    assert_eq!(upstream_reset(&seen).await, h2::Reason::ENHANCE_YOUR_CALM);
}

#[tokio::test]
async fn an_upstream_reset_resets_the_client_stream_with_the_same_reason() {
    let backend = Backend::start(
        None,
        Arc::new(|req, mut respond, _| {
            Box::pin(async move {
                if req.uri().path() == "/before-head" {
                    respond.send_reset(h2::Reason::INADEQUATE_SECURITY);
                    return;
                }
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                send.send_data(Bytes::from_static(b"some"), false).unwrap();
                sleep(Duration::from_millis(50)).await;
                send.send_reset(h2::Reason::HTTP_1_1_REQUIRED);
            })
        }),
    )
    .await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let send = client(proxy.addr).await;
    for (path, reason) in [
        ("/before-head", h2::Reason::INADEQUATE_SECURITY),
        ("/mid-body", h2::Reason::HTTP_1_1_REQUIRED),
    ] {
        let mut s = send.clone().ready().await.unwrap();
        let (response, _) = s.send_request(request(path, &[]), true).unwrap();
        let got = timeout(WAIT, async {
            let (_, mut body) = response.await?.into_parts();
            while let Some(chunk) = body.data().await {
                chunk?;
            }
            body.trailers().await.map(|_| ())
        })
        .await
        .unwrap();
        let err = got.expect_err("the stream is reset");
        assert_eq!(err.reason(), Some(reason), "{path}: {err}");
    }
}

#[tokio::test]
async fn a_slow_reader_holds_back_the_writer_instead_of_the_router_buffering() {
    let (open, gate) = watch::channel(false);
    let received = Arc::new(Mutex::new(None));
    let r = received.clone();
    let backend = Backend::start(
        None,
        Arc::new(move |req, mut respond, _| {
            let (mut gate, r) = (gate.clone(), r.clone());
            Box::pin(async move {
                let _ = gate.wait_for(|g| *g).await;
                let mut body = req.into_body();
                let mut all = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    all.extend_from_slice(&chunk);
                }
                *r.lock().unwrap() = Some(all);
                let _ = respond.send_response(Response::new(()), true);
            })
        }),
    )
    .await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let mut send = client(proxy.addr).await.ready().await.unwrap();
    let (response, mut body) = send.send_request(request("/big", &[]), false).unwrap();
    let data: Vec<u8> = (0..16 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let (progress, copy) = (sent.clone(), data.clone());
    let writer = tokio::spawn(async move {
        send_body(&mut body, &copy, &progress).await;
        body.send_data(Bytes::new(), true).unwrap();
    });
    // The backend reads nothing yet: the client may send only what the
    // windows on the way allow (router's stream window plus the backend's).
    backend.wait_streams(1).await;
    sleep(Duration::from_millis(300)).await;
    let before = sent.load(Ordering::SeqCst);
    assert!(before > 0, "the body started");
    assert!(
        before <= 1 << 20,
        "{before} bytes accepted from the client while the backend read nothing"
    );
    open.send_replace(true);
    let answer = timeout(WAIT, answer(response)).await.unwrap().unwrap();
    assert_eq!(answer.head.status(), 200);
    writer.await.unwrap();
    let received = received
        .lock()
        .unwrap()
        .take()
        .expect("the backend read the body");
    assert!(
        received == data,
        "every byte arrived, in order ({} of {})",
        received.len(),
        data.len()
    );
}

#[tokio::test]
async fn a_full_upstream_connection_makes_the_router_open_another() {
    let (release, held_streams) = watch::channel(false);
    let backend = Backend::start(Some(2), held(held_streams)).await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let send = client(proxy.addr).await;
    let call = |i: usize| {
        let send = send.clone();
        tokio::spawn(async move { get(&send, &format!("/{i}"), &[]).await })
    };
    let mut calls = vec![call(0)];
    // Once the first stream is in, the backend's SETTINGS are known.
    backend.wait_streams(1).await;
    calls.extend((1..5).map(call));
    backend.wait_streams(5).await;
    assert_eq!(backend.conns(), 3, "5 streams at 2 per connection");
    release.send_replace(true);
    for c in calls {
        assert_eq!(c.await.unwrap().head.status(), 200);
    }
}

#[tokio::test]
async fn an_upstream_connection_idle_past_the_pool_idle_timeout_is_not_used_again() {
    let a = Backend::echo("a").await;
    let idle_cfg = ProxyConfig {
        pool_idle_timeout: Duration::from_millis(200),
        ..cfg()
    };
    let proxy = proxy_to(a.addr, idle_cfg).await;
    let send = client(proxy.addr).await;
    assert_eq!(get(&send, "/1", &[]).await.header("x-conn"), "1");
    assert_eq!(get(&send, "/2", &[]).await.header("x-conn"), "1", "reused");
    sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&send, "/3", &[]).await.header("x-conn"), "2", "expired");
}

#[tokio::test]
async fn a_drain_sends_goaway_and_lets_open_streams_finish() {
    let (release, held_streams) = watch::channel(false);
    let backend = Backend::start(None, held(held_streams)).await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let send = client(proxy.addr).await;
    let open = {
        let send = send.clone();
        tokio::spawn(async move { get(&send, "/open", &[]).await })
    };
    backend.wait_streams(1).await;
    proxy.pool.begin_drain();
    // The client learns of the GOAWAY: it may open no new stream.
    let deadline = Instant::now() + WAIT;
    while send.clone().ready().await.is_ok() {
        assert!(Instant::now() < deadline, "no GOAWAY");
        sleep(Duration::from_millis(5)).await;
    }
    release.send_replace(true);
    let answer = timeout(WAIT, open).await.unwrap().unwrap();
    assert_eq!(answer.head.status(), 200, "the open stream finished");
}

#[tokio::test]
async fn a_terminating_endpoint_gets_no_new_stream_while_its_open_one_finishes() {
    let (release, held_streams) = watch::channel(false);
    let backend = Backend::start(None, held(held_streams)).await;
    let addr = backend.addr;
    let proxy = proxy_to(addr, cfg()).await;
    let send = client(proxy.addr).await;
    let open = {
        let send = send.clone();
        tokio::spawn(async move { get(&send, "/open", &[]).await })
    };
    backend.wait_streams(1).await;
    assert_eq!(proxy.pool.h2.connections(addr), 1);
    proxy.pool.update(Default::default(), Default::default());
    assert_eq!(
        proxy.pool.h2.connections(addr),
        0,
        "its connection takes no new stream"
    );
    release.send_replace(true);
    assert_eq!(
        timeout(WAIT, open).await.unwrap().unwrap().head.status(),
        200
    );
}

/// A backend whose first connection refuses every stream (after reading
/// its body) and whose others echo.
async fn refusing_first_connection() -> Backend {
    Backend::start(
        None,
        Arc::new(|req, mut respond, conn| {
            Box::pin(async move {
                if conn == 1 {
                    let _ = read_all(&mut req.into_body()).await;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                } else {
                    echo("second", req, respond, conn).await;
                }
            })
        }),
    )
    .await
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_on_another_connection() {
    let backend = refusing_first_connection().await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let answer = get(&client(proxy.addr).await, "/", &[]).await;
    assert_eq!(answer.head.status(), 200);
    assert_eq!(answer.header("x-conn"), "2");
}

#[tokio::test]
async fn a_refused_stream_with_a_small_body_is_sent_again_whole() {
    let backend = refusing_first_connection().await;
    let proxy = proxy_to(backend.addr, cfg()).await;
    let mut send = client(proxy.addr).await.ready().await.unwrap();
    let (response, mut body) = send.send_request(request("/unary", &[]), false).unwrap();
    body.send_data(Bytes::from_static(b"\0\0\0\0\x05hello"), false)
        .unwrap();
    body.send_data(Bytes::from_static(b" again"), true).unwrap();
    let answer = timeout(WAIT, answer(response)).await.unwrap().unwrap();
    assert_eq!(answer.head.status(), 200);
    assert_eq!(answer.header("x-conn"), "2");
    assert_eq!(
        answer.body, b"\0\0\0\0\x05hello again",
        "the whole body, once"
    );
}

#[tokio::test]
async fn an_upstream_goaway_moves_new_streams_to_another_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut id = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            id += 1;
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    if id == 1 {
                        // Its first stream is still answered after GOAWAY.
                        conn.graceful_shutdown();
                    }
                    tokio::spawn(echo("b", req, respond, id));
                }
            });
        }
    });
    let proxy = proxy_to(addr, cfg()).await;
    let send = client(proxy.addr).await;
    assert_eq!(get(&send, "/1", &[]).await.header("x-conn"), "1");
    assert_eq!(
        get(&send, "/2", &[]).await.header("x-conn"),
        "2",
        "new stream, new connection"
    );
    assert_eq!(get(&send, "/3", &[]).await.header("x-conn"), "2");
}

#[tokio::test]
async fn grpc_calls_get_grpc_statuses_plain_clients_http_ones() {
    let dead = dead_addr().await;
    let proxy = Proxy::start(
        cfg(),
        TestRoutes::new(move |r, _| match r.path {
            "/dead" => to(dead),
            _ => Route::Reject {
                status: 503,
                body: "laneway: lane joint1 of service shop/reviews has no serving endpoint, and the lane is strict\n".into(),
                route_header: None,
            },
        }),
        Protocol::Http2,
    )
    .await;
    let send = client(proxy.addr).await;
    let grpc = [("content-type", "application/grpc+proto")];
    let strict = get(&send, "/strict", &grpc).await;
    assert_eq!(strict.head.status(), 200, "trailers-only");
    assert_eq!(strict.header("grpc-status"), "14", "UNAVAILABLE");
    let message = strict.header("grpc-message");
    assert!(
        message.contains("joint1") && message.contains("shop/reviews"),
        "{message}"
    );
    assert!(strict.body.is_empty());
    let dead = get(&send, "/dead", &grpc).await;
    assert_eq!(dead.header("grpc-status"), "14", "connect failure");
    let plain = get(&send, "/strict", &[]).await;
    assert_eq!(plain.head.status(), 503);
    assert!(String::from_utf8_lossy(&plain.body).contains("shop/reviews"));
    let outcomes = proxy.outcomes(3).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.grpc_status == Some(14))
            .count(),
        2
    );
    assert!(outcomes.iter().all(|o| o.by_router));
}

/// A proxy to a backend that never answers, with `response_timeout`.
async fn proxy_to_silence(response_timeout: Duration) -> Proxy {
    let backend = Backend::start(
        None,
        Arc::new(|_request, respond, _| {
            Box::pin(async move {
                let _unanswered = respond;
                std::future::pending::<()>().await;
            })
        }),
    )
    .await;
    let cfg = ProxyConfig {
        response_timeout,
        ..cfg()
    };
    proxy_to(backend.addr, cfg).await
}

#[tokio::test]
async fn grpc_timeout_bounds_the_wait_for_the_response() {
    let proxy = proxy_to_silence(Duration::from_secs(60)).await;
    let answer = get(
        &client(proxy.addr).await,
        "/svc.Slow/Call",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "200m"),
        ],
    )
    .await;
    assert_eq!(answer.header("grpc-status"), "4", "DEADLINE_EXCEEDED");
    let proxy = proxy_to_silence(Duration::from_millis(200)).await;
    let send = client(proxy.addr).await;
    let plain = get(&send, "/slow", &[]).await;
    assert_eq!(plain.head.status(), 504);
    // The configured timeout, when shorter than the call's, ends the wait.
    let long_call = get(
        &send,
        "/svc.Slow/Call",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "60S"),
        ],
    )
    .await;
    assert_eq!(long_call.header("grpc-status"), "4");
}

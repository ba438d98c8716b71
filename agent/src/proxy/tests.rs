//! End-to-end tests of the proxy engine over real loopback sockets: a test
//! backend that echoes what it saw, a scriptable test router that records
//! its calls, and a raw HTTP/1.1 client.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, sleep, timeout},
};

use super::*;

/// Upper bound for any single wait in a test.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) fn test_cfg() -> ProxyConfig {
    ProxyConfig {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        sniff_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Byte helpers

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn fill(s: &mut TcpStream, buf: &mut BytesMut) -> bool {
    buf.reserve(16 * 1024);
    matches!(s.read_buf(buf).await, Ok(n) if n > 0)
}

async fn read_until(s: &mut TcpStream, buf: &mut BytesMut, delim: &[u8]) -> Option<Vec<u8>> {
    loop {
        if let Some(pos) = find(buf, delim) {
            return Some(buf.split_to(pos + delim.len()).to_vec());
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

async fn read_n(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(s, buf).await {
            return None;
        }
    }
    Some(buf.split_to(n).to_vec())
}

/// Independent chunked decoder: returns (raw bytes, decoded data, trailers).
async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut BytesMut,
) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut data = Vec::new();
    loop {
        let line = read_until(s, buf, b"\r\n").await?;
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line[..line.len() - 2]).to_string();
        let size_text = text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let line = read_until(s, buf, b"\r\n").await?;
                raw.extend_from_slice(&line);
                if line == b"\r\n" {
                    return Some((raw, data, trailers));
                }
                trailers.extend_from_slice(&line);
            }
        }
        let chunk = read_n(s, buf, size + 2).await?;
        raw.extend_from_slice(&chunk);
        data.extend_from_slice(&chunk[..size]);
    }
}

fn parse_headers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// Test backend

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    conn: usize,
    path: String,
    pub(crate) raw_head: String,
    headers: Vec<(String, String)>,
    body_raw: Vec<u8>,
    body: Vec<u8>,
}

pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub(crate) async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (conns.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = c.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(backend_conn(stream, name, id, s.clone()));
            }
        });
        Backend { addr, conns, seen }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn conn_count(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn backend_conn(
    mut s: TcpStream,
    name: &'static str,
    id: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = BytesMut::new();
    let mut nreq = 0;
    while let Some(raw_head) = read_until(&mut s, &mut buf, b"\r\n\r\n").await {
        nreq += 1;
        let raw_text = String::from_utf8_lossy(&raw_head).to_string();
        let first = raw_text.lines().next().unwrap_or_default().to_owned();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let headers = parse_headers(&raw_head);
        if path == "/die-on-reuse" && nreq > 1 {
            return;
        }
        match path.as_str() {
            "/never" => {
                sleep(Duration::from_secs(30)).await;
                return;
            }
            "/garbage" => {
                let _ = s.write_all(b"NOT-HTTP garbage\r\n\r\n").await;
                sleep(Duration::from_millis(200)).await;
                return;
            }
            "/early" => {
                let _ = s
                    .write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 4\r\n\r\nnope")
                    .await;
                sleep(Duration::from_secs(2)).await;
                return;
            }
            "/continue" if header(&headers, "expect") == Some("100-continue") => {
                let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            _ => {}
        }
        let (body_raw, body) = if header(&headers, "transfer-encoding").is_some() {
            match read_chunked(&mut s, &mut buf).await {
                Some((raw, data, _)) => (raw, data),
                None => return,
            }
        } else if let Some(n) = header(&headers, "content-length") {
            match read_n(&mut s, &mut buf, n.parse().unwrap()).await {
                Some(b) => (b.clone(), b),
                None => return,
            }
        } else {
            (Vec::new(), Vec::new())
        };
        seen.lock().unwrap().push(Seen {
            conn: id,
            path: path.clone(),
            raw_head: raw_text,
            headers: headers.clone(),
            body_raw,
            body: body.clone(),
        });
        let tag = header(&headers, "x-mse-tag").unwrap_or("-").to_owned();
        let ident = format!("x-backend: {name}\r\nx-conn: {id}\r\nx-tag: {tag}\r\n");
        let r = match path.as_str() {
            "/chunked-resp" => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\n{ident}transfer-encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"
                );
                s.write_all(resp.as_bytes()).await
            }
            "/until-close" => {
                let resp = format!("HTTP/1.1 200 OK\r\n{ident}\r\nbody until close");
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
                return;
            }
            "/conn-close" => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\n{ident}connection: close\r\ncontent-length: 2\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                return;
            }
            "/partial" => {
                let resp =
                    format!("HTTP/1.1 200 OK\r\n{ident}content-length: 100\r\n\r\n0123456789");
                let _ = s.write_all(resp.as_bytes()).await;
                return;
            }
            "/204" => {
                s.write_all(format!("HTTP/1.1 204 No Content\r\n{ident}\r\n").as_bytes())
                    .await
            }
            "/304" => {
                let resp =
                    format!("HTTP/1.1 304 Not Modified\r\n{ident}content-length: 10\r\n\r\n");
                s.write_all(resp.as_bytes()).await
            }
            "/upgrade" => {
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\n{ident}connection: upgrade\r\nupgrade: echo\r\n\r\n"
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                // Uppercase echo until EOF, then a goodbye (half-close test).
                loop {
                    if !buf.is_empty() {
                        let upper = buf.to_ascii_uppercase();
                        buf.clear();
                        if s.write_all(&upper).await.is_err() {
                            return;
                        }
                    }
                    if !fill(&mut s, &mut buf).await {
                        break;
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
                return;
            }
            _ => {
                if path == "/slow" {
                    sleep(Duration::from_millis(200)).await;
                }
                let payload = if body.is_empty() {
                    format!("hello from {name}").into_bytes()
                } else {
                    body
                };
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\n{ident}content-length: {}\r\n\r\n",
                    payload.len()
                )
                .into_bytes();
                if method != "HEAD" {
                    resp.extend_from_slice(&payload);
                }
                s.write_all(&resp).await
            }
        };
        if r.is_err() || path == "/stale" {
            return;
        }
    }
}

/// A raw TCP server running `handler` for every connection.
pub(crate) async fn spawn_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

pub(crate) async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// An address that refuses connections.
pub(crate) async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------
// Test router

type HttpRule = Box<dyn Fn(&RequestView<'_>, &[SocketAddr]) -> Route + Send + Sync>;
type L4Rule = Box<dyn Fn(&[SocketAddr]) -> Route + Send + Sync>;

pub(crate) struct TestRoutes {
    http: HttpRule,
    l4: L4Rule,
    http_calls: Mutex<Vec<(String, Vec<SocketAddr>)>>,
    l4_calls: AtomicUsize,
    outcomes: Arc<Mutex<Vec<RequestOutcome>>>,
}

/// A [`TestRoutes`] decision in flight: records its outcome.
struct Recorded(Arc<Mutex<Vec<RequestOutcome>>>);

impl InFlight for Recorded {
    fn finish(self: Box<Self>, outcome: RequestOutcome) {
        self.0.lock().unwrap().push(outcome);
    }
}

impl TestRoutes {
    pub(crate) fn new(
        http: impl Fn(&RequestView<'_>, &[SocketAddr]) -> Route + Send + Sync + 'static,
    ) -> Self {
        Self::with_l4(http, |_| Route::Reject {
            status: 503,
            body: String::new(),
            route_header: None,
        })
    }

    fn with_l4(
        http: impl Fn(&RequestView<'_>, &[SocketAddr]) -> Route + Send + Sync + 'static,
        l4: impl Fn(&[SocketAddr]) -> Route + Send + Sync + 'static,
    ) -> Self {
        Self {
            http: Box::new(http),
            l4: Box::new(l4),
            http_calls: Mutex::new(Vec::new()),
            l4_calls: AtomicUsize::new(0),
            outcomes: Arc::default(),
        }
    }

    fn l4_only(l4: impl Fn(&[SocketAddr]) -> Route + Send + Sync + 'static) -> Self {
        Self::with_l4(
            |_, _| Route::Reject {
                status: 503,
                body: String::new(),
                route_header: None,
            },
            l4,
        )
    }
}

impl TestRoutes {
    fn routed(&self, route: Route) -> Routed {
        Routed {
            route,
            request: Box::new(Recorded(self.outcomes.clone())),
        }
    }
}

impl Routes for TestRoutes {
    fn route_http(&self, request: &RequestView<'_>, exclude: &[SocketAddr]) -> Routed {
        self.http_calls
            .lock()
            .unwrap()
            .push((request.path.to_owned(), exclude.to_vec()));
        self.routed((self.http)(request, exclude))
    }

    fn route_l4(&self, exclude: &[SocketAddr]) -> Routed {
        self.l4_calls.fetch_add(1, Ordering::SeqCst);
        self.routed((self.l4)(exclude))
    }

    fn observe_unrouted(&self, outcome: RequestOutcome) {
        self.outcomes.lock().unwrap().push(outcome);
    }

    fn serving(&self, _: &'static str) {}
}

pub(crate) fn to(endpoint: SocketAddr) -> Route {
    Route::Forward(Target {
        endpoint,
        tag_header: "x-mse-tag".into(),
        tag: None,
        baggage: None,
        route_header: None,
    })
}

pub(crate) fn to_tagged(endpoint: SocketAddr, tag: Option<&str>, route: Option<&str>) -> Route {
    Route::Forward(Target {
        endpoint,
        tag_header: "x-mse-tag".into(),
        tag: tag.map(str::to_owned),
        baggage: None,
        route_header: route.map(str::to_owned),
    })
}

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    routes: Arc<TestRoutes>,
    pub(crate) pool: Arc<Pools>,
}

impl Proxy {
    pub(crate) async fn start(cfg: ProxyConfig, routes: TestRoutes, mode: Protocol) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(routes);
        let pool = Arc::new(Pools::new(&cfg));
        let cfg = Arc::new(cfg);
        let (r, p) = (routes.clone(), pool.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let routes: Arc<dyn Routes> = r.clone();
                tokio::spawn(serve_connection(s, routes, p.of(None), cfg.clone(), mode));
            }
        });
        Proxy { addr, routes, pool }
    }

    /// A proxy with the default config that sends every request and stream
    /// to one fresh backend, `a`.
    async fn to_one_backend(mode: Protocol) -> (Backend, Proxy) {
        let a = Backend::start("a").await;
        let aa = a.addr;
        let proxy = Proxy::start(test_cfg(), TestRoutes::new(move |_, _| to(aa)), mode).await;
        (a, proxy)
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Wait until `n` outcomes were observed, then return them.
    pub(crate) async fn outcomes(&self, n: usize) -> Vec<RequestOutcome> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let o = self.routes.outcomes.lock().unwrap();
                if o.len() >= n {
                    return o.clone();
                }
            }
            assert!(Instant::now() < deadline, "expected {n} outcomes");
            sleep(Duration::from_millis(5)).await;
        }
    }

    fn http_calls(&self) -> Vec<(String, Vec<SocketAddr>)> {
        self.routes.http_calls.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// Test client

#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    raw_head: String,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    trailers: String,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) struct Client {
    pub(crate) s: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    pub(crate) async fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).await.unwrap();
    }

    pub(crate) async fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes())
            .await;
        self.response().await
    }

    pub(crate) async fn response(&mut self) -> Resp {
        self.response_to(false).await
    }

    async fn response_to(&mut self, head_request: bool) -> Resp {
        timeout(WAIT, self.read_response(head_request))
            .await
            .expect("response timed out")
            .expect("connection closed before a complete response")
    }

    async fn read_response(&mut self, head_request: bool) -> Option<Resp> {
        let raw = read_until(&mut self.s, &mut self.buf, b"\r\n\r\n").await?;
        let raw_head = String::from_utf8_lossy(&raw).into_owned();
        let status: u16 = raw_head.split(' ').nth(1)?.parse().ok()?;
        let headers = parse_headers(&raw);
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let (body, trailers) = if no_body {
            (Vec::new(), Vec::new())
        } else if header(&headers, "transfer-encoding") == Some("chunked") {
            let (_, data, trailers) = read_chunked(&mut self.s, &mut self.buf).await?;
            (data, trailers)
        } else if let Some(n) = header(&headers, "content-length") {
            (
                read_n(&mut self.s, &mut self.buf, n.parse().ok()?).await?,
                Vec::new(),
            )
        } else {
            let mut all = self.buf.split().to_vec();
            self.s.read_to_end(&mut all).await.ok()?;
            (all, Vec::new())
        };
        Some(Resp {
            status,
            raw_head,
            headers,
            body,
            trailers: String::from_utf8_lossy(&trailers).into_owned(),
        })
    }

    /// Whether the proxy closed the connection (EOF with nothing more sent).
    async fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 64];
        matches!(
            timeout(WAIT, self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Whether the connection is still open (no EOF within a short time).
    async fn open_after(&mut self, wait: Duration) -> bool {
        let mut b = [0u8; 64];
        timeout(wait, self.s.read(&mut b)).await.is_err()
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

// ---------------------------------------------------------------------------
// HTTP routing and rewriting

#[tokio::test]
async fn keep_alive_routes_each_request_separately() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (aa, ba) = (a.addr, b.addr);
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |h, _| {
            if h.path.starts_with("/a") {
                to_tagged(aa, Some("blue"), Some("svc/blue"))
            } else {
                to_tagged(ba, Some("green"), None)
            }
        }),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let r1 = c.get("/a1").await;
    let r2 = c.get("/b1").await;
    let r3 = c.get("/a2").await;
    assert_eq!(
        (r1.status, r2.status, r3.status),
        (200, 200, 200),
        "{r1:?} {r2:?} {r3:?}"
    );
    assert_eq!(r1.header("x-backend"), Some("a"));
    assert_eq!(r2.header("x-backend"), Some("b"));
    assert_eq!(r3.header("x-backend"), Some("a"));
    assert_eq!(r1.header("x-laneway-route"), Some("svc/blue"));
    assert_eq!(r2.header("x-laneway-route"), None);
    assert_eq!(r1.header("x-tag"), Some("blue"));
    assert_eq!(r2.header("x-tag"), Some("green"));
    // One upstream connection to a, reused for the third request.
    assert_eq!(r3.header("x-conn"), r1.header("x-conn"));
    assert_eq!(a.conn_count(), 1);
    let calls: Vec<String> = proxy.http_calls().into_iter().map(|c| c.0).collect();
    assert_eq!(calls, ["/a1", "/b1", "/a2"]);
    let outcomes = proxy.outcomes(3).await;
    assert_eq!(outcomes.len(), 3);
    let eps: Vec<SocketAddr> = outcomes
        .iter()
        .map(|o| o.target.as_ref().unwrap().endpoint)
        .collect();
    assert_eq!(eps, [aa, ba, aa]);
    assert!(
        outcomes
            .iter()
            .all(|o| o.status == 200 && o.error.is_none())
    );
}

#[tokio::test]
async fn tag_header_is_replaced_or_removed_upstream() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |h, _| {
            // The router sees the client's tag.
            assert_eq!(h.header("x-mse-tag"), Some(&b"evil"[..]));
            if h.path == "/keep" {
                to_tagged(aa, Some("gray"), None)
            } else {
                to_tagged(aa, None, None)
            }
        }),
        Protocol::Http,
    )
    .await;
    let mut c = proxy.client().await;
    let req = "GET /keep HTTP/1.1\r\nHost: svc\r\nX-MSE-Tag: evil\r\nX-First: 1\r\nx-mse-tag: evil\r\nX-Last: Z z\r\n\r\n";
    c.send(req.as_bytes()).await;
    assert_eq!(c.response().await.status, 200);
    c.send(req.replace("/keep", "/drop").as_bytes()).await;
    assert_eq!(c.response().await.status, 200);
    let seen = a.seen();
    assert_eq!(
        seen[0].raw_head,
        "GET /keep HTTP/1.1\r\nHost: svc\r\nX-First: 1\r\nX-Last: Z z\r\nx-mse-tag: gray\r\n\r\n"
    );
    assert_eq!(
        seen[1].raw_head,
        "GET /drop HTTP/1.1\r\nHost: svc\r\nX-First: 1\r\nX-Last: Z z\r\n\r\n"
    );
}

#[tokio::test]
async fn an_h2c_upgrade_request_is_served_as_http11_with_the_upgrade_declined() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(
        b"GET /up HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "not 101: {}", r.raw_head);
    assert!(r.raw_head.starts_with("HTTP/1.1 200"));
    assert_eq!(
        a.seen()[0].raw_head,
        "GET /up HTTP/1.1\r\nHost: svc\r\n\r\n",
        "no Upgrade nor HTTP2-Settings upstream"
    );
    // The connection stays HTTP/1.1.
    assert_eq!(c.get("/again").await.status, 200);
}

#[tokio::test]
async fn content_length_body_arrives_intact() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    let body = random_bytes(100 * 1024);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echoed body differs");
    assert!(a.seen()[0].body == body);
    // Still usable afterwards.
    assert_eq!(c.get("/after").await.status, 200);
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers_then_pipelined_request() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    let chunked: &[u8] =
        b"4;name=value\r\nWiki\r\n6;a=\"b c\"\r\npedia \r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n";
    let mut req =
        b"POST /chunks HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(chunked);
    // Second request pipelined in the same write.
    req.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: svc\r\n\r\n");
    c.send(&req).await;
    let r1 = c.response().await;
    let r2 = c.response().await;
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(r1.text(), "Wikipedia  in\r\n\r\nchunks.");
    assert_eq!(r2.text(), "hello from a");
    let seen = a.seen();
    assert_eq!(
        seen[0].body_raw, chunked,
        "chunked bytes forwarded verbatim"
    );
    assert_eq!(seen[1].path, "/second");
}

#[tokio::test]
async fn invalid_chunked_request_body_is_400() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Http).await;
    let mut c = proxy.client().await;
    c.send(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 400);
    assert!(c.closed().await);
    assert_eq!(proxy.outcomes(1).await[0].status, 400);
}

// ---------------------------------------------------------------------------
// Response framing

#[tokio::test]
async fn chunked_content_length_and_until_close_responses() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, _| to_tagged(aa, None, Some("r"))),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let r = c.get("/chunked-resp").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello, world");
    assert_eq!(r.trailers, "x-trailer: t\r\n");
    assert_eq!(r.header("x-laneway-route"), Some("r"));
    let r = c.get("/plain").await;
    assert_eq!(r.text(), "hello from a");
    assert_eq!(a.conn_count(), 1, "reused after chunked response");
    let r = c.get("/until-close").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body until close");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    proxy.outcomes(3).await;
    // The connection that was read until close is not pooled.
    assert_eq!(proxy.pool.idle_count(), 0);
}

#[tokio::test]
async fn bodyless_responses_keep_the_connection() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"HEAD /head HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let r = c.response_to(true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    let r = c.get("/204").await;
    assert_eq!(r.status, 204);
    let r = c.get("/304").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("content-length"), Some("10"));
    // Had any body bytes been expected or forwarded, this would desync.
    let r = c.get("/last").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello from a"));
    assert_eq!(a.conn_count(), 1);
    assert_eq!(proxy.outcomes(4).await.len(), 4);
}

#[tokio::test]
async fn expect_100_continue() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, _| to_tagged(aa, None, Some("lane"))),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    c.send(
        b"PUT /continue HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    // The client waits for 100 before sending the body.
    let interim = c.response().await;
    assert_eq!(interim.raw_head, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(interim.header("x-laneway-route"), None);
    c.send(b"hello").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("x-laneway-route"), Some("lane"));
    assert_eq!(
        a.seen()[0]
            .headers
            .iter()
            .filter(|h| h.0 == "expect")
            .count(),
        1
    );
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 200);
    assert_eq!(c.get("/next").await.status, 200);
}

#[tokio::test]
async fn early_response_without_reading_body_closes_client() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(
        b"POST /early HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 417);
    assert_eq!(r.text(), "nope");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 417);
    assert_eq!(proxy.pool.idle_count(), 0);
}

#[tokio::test]
async fn upstream_dies_mid_response_closes_client() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"GET /partial HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let head = timeout(WAIT, read_until(&mut c.s, &mut c.buf, b"\r\n\r\n"))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut rest = c.buf.split().to_vec();
    timeout(WAIT, c.s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"0123456789", "partial body then close");
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 200);
    assert!(o[0].error.is_some());
}

// ---------------------------------------------------------------------------
// Connection management

#[tokio::test]
async fn client_connection_close_closes_the_client_side_only() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"GET /bye HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "connection"), Some("close"));
    assert!(c.closed().await);
    // Connection-specific: not forwarded, the upstream connection is kept.
    assert_eq!(header(&a.seen()[0].headers, "connection"), None);
    proxy.outcomes(1).await;
    assert_eq!(proxy.pool.idle_count(), 1);
}

#[tokio::test]
async fn upstream_connection_close_is_forwarded_and_honoured() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    let r = c.get("/conn-close").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "ok");
    assert!(c.closed().await);
    proxy.outcomes(1).await;
    assert_eq!(proxy.pool.idle_count(), 0);
}

#[tokio::test]
async fn http10_client_without_keep_alive_is_closed() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"GET /old HTTP/1.0\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(c.closed().await);
    assert!(a.seen()[0].raw_head.starts_with("GET /old HTTP/1.0\r\n"));
}

#[tokio::test]
async fn http10_client_asking_for_keep_alive_keeps_its_connection() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    for path in ["/one", "/two"] {
        c.send(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"), "{}", r.raw_head);
    }
    assert!(c.open_after(Duration::from_millis(100)).await);
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].raw_head.starts_with("GET /one HTTP/1.0\r\n")
            && seen[0].raw_head.contains("connection: keep-alive\r\n"),
        "the upstream is asked to keep its connection too: {}",
        seen[0].raw_head
    );
    assert_eq!(a.conn_count(), 1, "and it is reused");
    // Without the token an HTTP/1.0 connection still closes.
    c.send(b"GET /three HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    assert!(c.closed().await);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let cfg = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(100),
        ..test_cfg()
    };
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(aa)), Protocol::Http).await;
    let mut c = proxy.client().await;
    // An idle client is governed by idle_timeout, not header_timeout.
    sleep(Duration::from_millis(150)).await;
    assert_eq!(c.get("/one").await.status, 200);
    let start = std::time::Instant::now();
    assert!(c.closed().await, "closed without a response");
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(proxy.outcomes(1).await.len(), 1);
}

#[tokio::test]
async fn upgrade_switches_to_tunnel_with_half_close() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, _| to_tagged(aa, None, Some("ws"))),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    c.send(
        b"GET /upgrade HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 101);
    assert_eq!(r.header("x-laneway-route"), Some("ws"));
    c.send(b"ping").await;
    c.s.shutdown().await.unwrap();
    let mut rest = c.buf.split().to_vec();
    timeout(WAIT, c.s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "EARLY PINGbye");
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 101);
}

#[tokio::test]
async fn connect_method_is_405() {
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 405);
    assert!(c.closed().await);
}

// ---------------------------------------------------------------------------
// Sniffing and L4 passthrough

#[tokio::test]
async fn l4_passthrough_of_random_bytes() {
    let upstream = spawn_server(echo).await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(move |_| to(upstream)),
        Protocol::Sniff,
    )
    .await;
    let mut data = random_bytes(1 << 20);
    data[0] = 0x00; // certainly not an HTTP method
    let c = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(WAIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    assert_eq!(proxy.routes.l4_calls.load(Ordering::SeqCst), 1);
    assert!(proxy.http_calls().is_empty());
}

#[tokio::test]
async fn tls_client_hello_goes_l4_unchanged() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    let upstream = spawn_server(move |mut s: TcpStream| {
        let rec = rec.clone();
        async move {
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all).await;
            *rec.lock().unwrap() = all;
            let _ = s.write_all(b"server hello").await;
        }
    })
    .await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(move |_| to(upstream)),
        Protocol::Sniff,
    )
    .await;
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend_from_slice(&random_bytes(500));
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(&hello).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(WAIT, c.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"server hello");
    assert!(*received.lock().unwrap() == hello);
}

#[tokio::test]
async fn server_first_protocol_goes_l4_after_sniff_timeout() {
    let upstream = spawn_server(|mut s: TcpStream| async move {
        let _ = s.write_all(b"220 ready\r\n").await;
        echo(s).await;
    })
    .await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(move |_| to(upstream)),
        Protocol::Sniff,
    )
    .await;
    let start = std::time::Instant::now();
    let mut c = Client::connect(proxy.addr).await;
    let greeting = timeout(WAIT, read_until(&mut c.s, &mut c.buf, b"\r\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, b"220 ready\r\n");
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "waited for sniff timeout"
    );
    c.send(b"HELO x\r\n").await;
    let echoed = timeout(WAIT, read_until(&mut c.s, &mut c.buf, b"\r\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"HELO x\r\n");
}

#[tokio::test]
async fn l4_half_close_keeps_other_direction() {
    let upstream = spawn_server(|mut s: TcpStream| async move {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        // Our read side saw EOF; our write side still works.
        sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(format!("got {}", all.len()).as_bytes()).await;
    })
    .await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(move |_| to(upstream)),
        Protocol::Opaque,
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(&[7u8; 3000]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(WAIT, c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"got 3000");
}

#[tokio::test]
async fn l4_connect_failure_tries_next_endpoint_and_reject_closes() {
    let upstream = spawn_server(echo).await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(move |ex| {
            if ex.is_empty() {
                to(dead)
            } else {
                to(upstream)
            }
        }),
        Protocol::Opaque,
    )
    .await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"abc").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(WAIT, c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"abc");
    assert_eq!(proxy.routes.l4_calls.load(Ordering::SeqCst), 2);

    let rejecting = Proxy::start(
        test_cfg(),
        TestRoutes::l4_only(|_| Route::Reject {
            status: 503,
            body: String::new(),
            route_header: None,
        }),
        Protocol::Opaque,
    )
    .await;
    let mut c = Client::connect(rejecting.addr).await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn split_method_is_still_sniffed_as_http() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let cfg = ProxyConfig {
        sniff_timeout: Duration::from_millis(500),
        ..test_cfg()
    };
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(aa)), Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"GE").await;
    sleep(Duration::from_millis(50)).await;
    c.send(b"T /split HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(a.seen()[0].path, "/split");
}

#[tokio::test]
async fn a_method_split_across_the_sniff_timeout_is_still_http() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let cfg = test_cfg();
    let slower_than_sniffing = cfg.sniff_timeout * 3;
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(aa)), Protocol::Sniff).await;
    let mut c = proxy.client().await;
    c.send(b"GE").await;
    sleep(slower_than_sniffing).await;
    c.send(b"T /late HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "routed as HTTP, not passed through");
    assert_eq!(a.seen()[0].path, "/late");
}

/// A client that connects and stays quiet past the sniff timeout (a pool
/// connecting ahead of its first request) and then sends HTTP is routed per
/// request, not passed through to the L4 stream's endpoint.
#[tokio::test]
async fn a_client_quiet_past_the_sniff_timeout_is_still_routed_per_request() {
    let lane = Backend::start("lane").await;
    let base = Backend::start("base").await;
    let (lane_addr, base_addr) = (lane.addr, base.addr);
    let cfg = test_cfg();
    let quiet = cfg.sniff_timeout * 3;
    let proxy = Proxy::start(
        cfg,
        TestRoutes::with_l4(move |_, _| to(lane_addr), move |_| to(base_addr)),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    sleep(quiet).await;
    let r = c.get("/late-first").await;
    assert_eq!(r.status, 200);
    assert_eq!(lane.seen().len(), 1, "routed per request, to its lane");
    assert_eq!(lane.seen()[0].path, "/late-first");
    assert!(base.seen().is_empty(), "nothing reached the L4 endpoint");
    assert_eq!(proxy.http_calls().len(), 1);
    // The same connection stays HTTP for its next request.
    assert_eq!(c.get("/second").await.status, 200);
    assert_eq!(lane.seen().len(), 2);
    // Only the two requests are reported: the L4 stream that waited for
    // the first word was not one.
    let outcomes = proxy.outcomes(2).await;
    assert!(outcomes.iter().all(|o| o.status == 200), "{outcomes:?}");
}

/// A sniffing proxy whose L4 streams go to `upstream`, and a client of it
/// that has been quiet for three sniff timeouts.
async fn quiet_l4_client(upstream: SocketAddr) -> (Proxy, Client) {
    let cfg = test_cfg();
    let quiet = cfg.sniff_timeout * 3;
    let proxy = Proxy::start(
        cfg,
        TestRoutes::l4_only(move |_| to(upstream)),
        Protocol::Sniff,
    )
    .await;
    let client = Client::connect(proxy.addr).await;
    sleep(quiet).await;
    (proxy, client)
}

/// A quiet client whose late first bytes are not HTTP goes on as the L4
/// stream, on the upstream connection made while it was quiet.
#[tokio::test]
async fn a_quiet_client_whose_late_bytes_are_opaque_is_passed_through() {
    let (proxy, mut c) = quiet_l4_client(spawn_server(echo).await).await;
    c.send(b"PING\r\n").await;
    let echoed = timeout(WAIT, read_until(&mut c.s, &mut c.buf, b"\r\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"PING\r\n");
    assert_eq!(proxy.routes.l4_calls.load(Ordering::SeqCst), 1);
}

/// While the router drains, a connection on which neither side said a word
/// is closed after the idle grace, like an idle keep-alive connection: it
/// holds no request, and a drain must not wait for it.
#[tokio::test]
async fn a_drain_closes_a_connection_on_which_nobody_spoke() {
    let silent = spawn_server(|s: TcpStream| async move {
        sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await;
    let (proxy, mut c) = quiet_l4_client(silent).await;
    proxy.pool.begin_drain();
    let start = Instant::now();
    assert!(c.closed().await, "closed by the drain");
    assert!(start.elapsed() < WAIT);
}

#[tokio::test]
async fn client_closing_before_sending_is_just_closed() {
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::with_l4(|_, _| panic!("no http"), |_| panic!("no l4")),
        Protocol::Sniff,
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    c.s.shutdown().await.unwrap();
    assert!(c.closed().await);
    sleep(Duration::from_millis(150)).await;
    assert_eq!(proxy.routes.l4_calls.load(Ordering::SeqCst), 0);
    assert!(proxy.http_calls().is_empty());
}

// ---------------------------------------------------------------------------
// Malformed requests

#[tokio::test]
async fn malformed_request_line_is_400() {
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Sniff,
    )
    .await;
    for bad in [
        &b"GET /x HTTP/9.9\r\n\r\n"[..],
        b"GET /a\x01b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ] {
        let mut c = proxy.client().await;
        c.send(bad).await;
        let r = c.response().await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed().await);
    }
    // With Protocol::Http nothing is sniffed: garbage is a bad request.
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Http,
    )
    .await;
    let mut c = proxy.client().await;
    c.send(b"\x16\x03\x01garbage\r\n\r\n").await;
    assert_eq!(c.response().await.status, 400);
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 400);
    assert!(o[0].target.is_none());
}

#[tokio::test]
async fn oversized_head_is_431() {
    let cfg = ProxyConfig {
        max_header_bytes: 1024,
        ..test_cfg()
    };
    let proxy = Proxy::start(
        cfg,
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    c.send(big.as_bytes()).await;
    assert_eq!(c.response().await.status, 431);
    assert!(c.closed().await);
    // Same without the blank line ever arriving.
    let mut c = proxy.client().await;
    c.send(format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2000)).as_bytes())
        .await;
    assert_eq!(c.response().await.status, 431);
    // And more than 100 header fields.
    let mut c = proxy.client().await;
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..101 {
        many.push_str(&format!("h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let proxy2 = Proxy::start(
        test_cfg(),
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Sniff,
    )
    .await;
    drop(c);
    c = proxy2.client().await;
    c.send(many.as_bytes()).await;
    assert_eq!(c.response().await.status, 431);
    let o = proxy.outcomes(2).await;
    assert!(o.iter().all(|o| o.status == 431));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    for bad in [
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "POST / HTTP/1.1\r\nContent-Length: five\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let mut c = proxy.client().await;
        c.send(bad.as_bytes()).await;
        assert_eq!(c.response().await.status, 400, "{bad:?}");
        assert!(c.closed().await);
    }
    assert!(a.seen().is_empty());
    assert!(proxy.http_calls().is_empty());
}

#[tokio::test]
async fn slow_request_head_is_408() {
    let cfg = ProxyConfig {
        header_timeout: Duration::from_millis(200),
        ..test_cfg()
    };
    let proxy = Proxy::start(
        cfg,
        TestRoutes::new(|_, _| panic!("must not route")),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let start = std::time::Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: sl").await;
    let r = c.response().await;
    assert_eq!(r.status, 408);
    assert!(start.elapsed() >= Duration::from_millis(180));
    assert!(c.closed().await);
    assert_eq!(proxy.outcomes(1).await[0].status, 408);
}

// ---------------------------------------------------------------------------
// Upstream failures

#[tokio::test]
async fn connect_refused_is_retried_on_another_endpoint() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let dead = dead_addr().await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, ex| if ex.is_empty() { to(dead) } else { to(aa) }),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let r = c.get("/retry").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("a"));
    let calls = proxy.http_calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[0].1.is_empty());
    assert_eq!(calls[1].1, [dead]);
    let o = proxy.outcomes(1).await;
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].target.as_ref().unwrap().endpoint, aa);
}

#[tokio::test]
async fn all_endpoints_refused_is_502_naming_them() {
    let d1 = dead_addr().await;
    let d2 = dead_addr().await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(
            move |_, ex| match [d1, d2].into_iter().find(|d| !ex.contains(d)) {
                Some(d) => to_tagged(d, None, Some("lane-x")),
                None => Route::Reject {
                    status: 503,
                    body: "none left".into(),
                    route_header: None,
                },
            },
        ),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains(&d1.to_string()), "{}", r.text());
    assert!(r.text().contains(&d2.to_string()), "{}", r.text());
    assert_eq!(r.header("x-laneway-route"), Some("lane-x"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // The connection is kept (no body to skip).
    assert_eq!(c.get("/y").await.status, 502);
    let o = proxy.outcomes(2).await;
    assert_eq!(o[0].status, 502);
    assert!(o[0].error.is_some());
}

#[tokio::test]
async fn reject_answers_status_and_body_and_keeps_connection() {
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(|_, _| Route::Reject {
            status: 503,
            body: "no lane for you\n".into(),
            route_header: None,
        }),
        Protocol::Sniff,
    )
    .await;
    let mut c = proxy.client().await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no lane for you\n");
    assert_eq!(r.header("x-laneway-route"), None);
    assert_eq!(r.header("connection"), None);
    // A request with a body: the body is skipped, the connection kept.
    c.send(b"POST /y HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    assert_eq!(c.response().await.status, 503);
    c.send(b"POST /z HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 503);
    assert_eq!(c.get("/w").await.status, 503);
    assert!(c.open_after(Duration::from_millis(100)).await);
    let o = proxy.outcomes(4).await;
    assert!(o.iter().all(|o| o.status == 503 && o.target.is_none()));
    assert_eq!(proxy.http_calls().len(), 4);
}

#[tokio::test]
async fn response_timeout_is_504() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let cfg = ProxyConfig {
        response_timeout: Duration::from_millis(300),
        ..test_cfg()
    };
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(aa)), Protocol::Sniff).await;
    let mut c = proxy.client().await;
    let start = std::time::Instant::now();
    let r = c.get("/never").await;
    assert_eq!(r.status, 504);
    assert!(start.elapsed() >= Duration::from_millis(280));
    let o = proxy.outcomes(1).await;
    assert_eq!(o[0].status, 504);
    assert!(o[0].error.is_some());
    assert_eq!(proxy.pool.idle_count(), 0);
    // The client connection is still usable.
    assert_eq!(c.get("/ok").await.status, 200);
}

#[tokio::test]
async fn garbage_response_is_502() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    let r = c.get("/garbage").await;
    assert_eq!(r.status, 502);
    assert_eq!(proxy.outcomes(1).await[0].status, 502);
    assert_eq!(proxy.pool.idle_count(), 0);
}

// ---------------------------------------------------------------------------
// Pooling

#[tokio::test]
async fn pool_reuses_upstream_connections_across_clients() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    for i in 0..3 {
        let mut c = proxy.client().await;
        assert_eq!(c.get(&format!("/r{i}")).await.status, 200);
        proxy.outcomes(i + 1).await;
    }
    assert_eq!(a.conn_count(), 1);
    assert!(a.seen().iter().all(|s| s.conn == 1));
    assert_eq!(proxy.pool.idle_count(), 1);
}

#[tokio::test]
async fn pool_keeps_at_most_max_idle_per_endpoint() {
    let a = Backend::start("a").await;
    let aa = a.addr;
    let cfg = ProxyConfig {
        pool_max_idle_per_endpoint: 1,
        ..test_cfg()
    };
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(aa)), Protocol::Sniff).await;
    let mut c1 = proxy.client().await;
    let mut c2 = proxy.client().await;
    let (r1, r2) = tokio::join!(c1.get("/slow"), c2.get("/slow"));
    assert_eq!((r1.status, r2.status), (200, 200));
    proxy.outcomes(2).await;
    assert_eq!(a.conn_count(), 2);
    assert_eq!(proxy.pool.idle_count(), 1);
}

#[tokio::test]
async fn stale_pooled_connection_is_not_used() {
    let (_a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    // The backend closes the connection right after this response.
    assert_eq!(c.get("/stale").await.status, 200);
    sleep(Duration::from_millis(50)).await;
    let r = c.get("/after").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-conn"), Some("2"));
}

#[tokio::test]
async fn dead_pooled_connection_is_retried_once_without_body() {
    let (a, proxy) = Proxy::to_one_backend(Protocol::Sniff).await;
    let mut c = proxy.client().await;
    assert_eq!(c.get("/die-on-reuse").await.status, 200);
    // The pooled connection looks healthy, but the backend drops the next
    // request on it: retried transparently on a fresh connection.
    let r = c.get("/die-on-reuse").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-conn"), Some("2"));
    assert_eq!(a.conn_count(), 2);
    // With a body it is not retried.
    c.send(b"POST /die-on-reuse HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 502);
    assert_eq!(a.conn_count(), 2);
    let o = proxy.outcomes(3).await;
    assert_eq!(
        o.iter().map(|o| o.status).collect::<Vec<_>>(),
        [200, 200, 502]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keep_alive_clients_on_multi_thread_runtime() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (aa, ba) = (a.addr, b.addr);
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |h, _| {
            let tag = h
                .header("x-lane")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let ep = if tag.as_deref() == Some("b") { ba } else { aa };
            Route::Forward(Target {
                endpoint: ep,
                tag_header: "x-mse-tag".into(),
                tag,
                baggage: None,
                route_header: None,
            })
        }),
        Protocol::Sniff,
    )
    .await;
    let mut tasks = Vec::new();
    for client in 0..16 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in 0..20 {
                let lane = if (client + i) % 2 == 0 { "a" } else { "b" };
                let body = format!("c{client}-r{i}");
                let req = format!(
                    "POST /echo HTTP/1.1\r\nHost: svc\r\nx-lane: {lane}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.send(req.as_bytes()).await;
                let r = c.response().await;
                assert_eq!(r.status, 200);
                assert_eq!(r.header("x-backend"), Some(lane));
                assert_eq!(r.header("x-tag"), Some(lane));
                assert_eq!(r.text(), body);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(proxy.outcomes(320).await.len(), 320);
    // Upstream connections were reused, not opened per request.
    assert!(a.conn_count() <= 16 && b.conn_count() <= 16);
}

/// A server whose first connection reads the request and closes without a
/// byte of answer; later connections answer 200.
async fn flaky_first_connection() -> SocketAddr {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    spawn_server(move |mut s| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let mut buf = BytesMut::new();
            if read_until(&mut s, &mut buf, b"\r\n\r\n").await.is_none() {
                return;
            }
            if n > 0 {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn idempotent_request_is_retried_once_when_upstream_closes_before_answering() {
    let addr = flaky_first_connection().await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, _| to(addr)),
        Protocol::Http,
    )
    .await;
    let mut c = proxy.client().await;
    assert_eq!(
        c.get("/").await.status,
        200,
        "GET retried on a fresh connection"
    );

    let addr = flaky_first_connection().await;
    let mut cfg = test_cfg();
    cfg.retry_idempotent = false;
    let proxy = Proxy::start(cfg, TestRoutes::new(move |_, _| to(addr)), Protocol::Http).await;
    let mut c = proxy.client().await;
    assert_eq!(c.get("/").await.status, 502, "retry turned off");

    let addr = flaky_first_connection().await;
    let proxy = Proxy::start(
        test_cfg(),
        TestRoutes::new(move |_, _| to(addr)),
        Protocol::Http,
    )
    .await;
    let mut c = proxy.client().await;
    c.send(b"POST / HTTP/1.1\r\nHost: svc\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 502, "POST is not idempotent");
}

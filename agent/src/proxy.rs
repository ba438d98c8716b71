//! The router's per-connection engine.
//!
//! Every connection the eBPF programs redirect to the node router is handed to
//! [`serve_connection`]. Depending on [`Protocol`] (and, for
//! [`Protocol::Sniff`] and [`Protocol::Http`], on the client's first bytes)
//! the connection is served by one of three engines: HTTP/1.x (one routing
//! decision per request), HTTP/2 (one per stream, many in flight at once) or
//! an opaque L4 stream copied byte for byte to one endpoint.
//!
//! The seam between the engines and the router is protocol-neutral: an
//! engine builds a [`RequestView`] of each request, asks a [`Routes`]
//! implementation for a [`Routed`] decision (a [`Route`] plus the request's
//! [`InFlight`] state) and gives that back with the request's
//! [`RequestOutcome`]. Routing *decisions* are not made here.
//!
//! Submodules:
//! - `sniff`: protocol detection from peeked bytes (HTTP/1.x, h2c, opaque).
//! - `h1`: the HTTP/1.x engine (`h1/head`: heads, `h1/body`: body framing).
//! - `h2`: the HTTP/2 engine (`h2/upstream`: multiplexed upstream
//!   connections, `h2/relay`: flow-controlled bodies, `h2/grpc`: gRPC
//!   statuses and deadlines).
//! - `pool`: upstream connect (from the calling pod's network namespace)
//!   and the HTTP/1 pools of idle upstream connections, per caller and
//!   endpoint.
//! - `l4`: opaque passthrough and raw tunnels (also used after `101`).

pub(crate) mod h1;
pub(crate) mod h2;
mod l4;
mod pool;
mod sniff;
#[cfg(test)]
pub(crate) mod tests;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use pool::{Caller, Pool, Pools};

/// Timeouts and limits (the agent fills it from its config).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// A request head larger than this is answered with `431` (default 64 KiB).
    /// Also bounds the size of a response head (larger: `502`).
    pub max_header_bytes: usize,
    /// The whole request head must arrive within this once its first byte
    /// arrived, else `408` (default 10 s). An idle keep-alive client is
    /// governed by `idle_timeout` instead.
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this (default
    /// 60 s). Also bounds every single read or write while a body is streamed.
    pub idle_timeout: Duration,
    /// Upstream connect timeout (default 1 s).
    pub connect_timeout: Duration,
    /// From request fully sent to response head received, else `504`
    /// (default 15 s).
    pub response_timeout: Duration,
    /// How long to wait for the client's first byte in [`Protocol::Sniff`]
    /// mode; none by then means a server-first protocol: L4 passthrough
    /// (default 300 ms). Once a byte arrived, the bytes decide, within
    /// `header_timeout`.
    pub sniff_timeout: Duration,
    /// At most this many idle upstream connections are kept per calling pod
    /// and endpoint (default 64).
    pub pool_max_idle_per_endpoint: usize,
    /// At most this many idle upstream connections are kept in all (default
    /// 1024); the oldest makes room.
    pub pool_max_idle_total: usize,
    /// Idle upstream connections are evicted after this (default 30 s).
    pub pool_idle_timeout: Duration,
    /// `SO_MARK` set on every upstream socket before connect (0 = do not set).
    pub socket_mark: u32,
    /// Where the router makes an enrolled pod's upstream sockets (the engine
    /// connects through the [`Pool`] it is given either way).
    pub upstream_source: crate::config::UpstreamSource,
    /// Send an idempotent request without a body once more (on a fresh
    /// connection) when the upstream closed or reset before any response
    /// byte. A reused pooled connection found dead is always retried so.
    pub retry_idempotent: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(15),
            sniff_timeout: Duration::from_millis(300),
            pool_max_idle_per_endpoint: 64,
            pool_max_idle_total: 1024,
            pool_idle_timeout: Duration::from_secs(30),
            socket_mark: 0,
            upstream_source: crate::config::UpstreamSource::Pod,
            retry_idempotent: true,
        }
    }
}

/// One request as the router sees it, whatever protocol carried it: each
/// engine builds it from its own parsed head.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// `http` (HTTP/1.x) or `h2`, as `laneway conns` shows it.
    pub protocol: &'static str,
    /// Request method, e.g. `GET`.
    pub method: &'a str,
    /// Request target (path and query) as sent by the client, e.g. `/api?x=1`.
    pub path: &'a str,
    /// The authority (`:authority`, else `Host`), if any.
    pub authority: Option<&'a str>,
    /// All request header fields in the order the client sent them (names
    /// as sent; including the tag header, if the client sent one).
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl RequestView<'_> {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// Whether this is a gRPC call (`content-type: application/grpc*`): its
    /// errors are answered as gRPC statuses.
    pub fn is_grpc(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc"))
    }
}

/// Whether `v` can be written as a field value (no CR, LF, NUL or other
/// controls except HTAB).
pub(crate) fn valid_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Where one request (or one L4 stream) goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The endpoint (pod IP and port) to connect to.
    pub endpoint: SocketAddr,
    /// The header the tag is written into upstream (lowercase, e.g.
    /// `x-mse-tag`); the client's fields of that name are not forwarded.
    /// The router takes it from the configuration in force for this
    /// request, so a reload that changes the tag headers applies to it.
    pub tag_header: String,
    /// Tag to write into `tag_header` upstream (replacing any value the client
    /// sent); `None` = remove the header.
    pub tag: Option<String>,
    /// The `baggage` header to send upstream (the client's, with the tag
    /// member set); `None` sends none.
    pub baggage: Option<String>,
    /// If `Some`, add response header `x-laneway-route: <value>` to the final
    /// response sent to the client.
    pub route_header: Option<String>,
}

impl Target {
    /// Whether the client's field `name` is left out upstream: the router
    /// writes its own (the tag header and `baggage`), or it is addressed to
    /// the router only (`x-laneway-endpoint`, on every service).
    pub(crate) fn replaces(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.tag_header)
            || name.eq_ignore_ascii_case("baggage")
            || name.eq_ignore_ascii_case(crate::route::pinning::PIN_HEADER)
    }

    /// The fields the router writes upstream in place of the client's:
    /// `baggage` (when any), then the tag header (when tagged); values that
    /// cannot be written as a field are left out.
    pub(crate) fn upstream_fields(&self) -> impl Iterator<Item = (&str, &str)> {
        let baggage = self.baggage.as_deref().map(|b| ("baggage", b));
        let tag = self
            .tag
            .as_deref()
            .filter(|_| !self.tag_header.is_empty())
            .map(|t| (self.tag_header.as_str(), t));
        baggage.into_iter().chain(tag).filter(|(name, value)| {
            let valid = valid_field_value(value.as_bytes());
            if !valid {
                tracing::debug!(
                    field = name,
                    "value contains control characters, not written"
                );
            }
            valid
        })
    }
}

/// A routing decision.
#[derive(Clone, Debug)]
pub enum Route {
    /// Send the request (or stream) to this target.
    Forward(Target),
    /// Answer the client with this status (e.g. 503) and a plain-text body;
    /// the connection is kept if the request body could be skipped. For L4
    /// streams the client connection is simply closed, or reset when the
    /// status is [`STATUS_FORBIDDEN`] (the caller is not allowed).
    Reject {
        /// Status code to answer with (outside 200..=599, or 204/304, is
        /// answered as 503).
        status: u16,
        /// Plain-text body sent verbatim.
        body: String,
        /// If `Some`, add response header `x-laneway-route: <value>`.
        route_header: Option<String>,
    },
}

/// [`RequestOutcome::status`] of an L4 stream: it has no HTTP status.
pub const STATUS_L4: u16 = 0;

/// The status of a request whose caller the service does not allow: a gRPC
/// call gets `PERMISSION_DENIED`, an L4 stream a reset.
pub const STATUS_FORBIDDEN: u16 = 403;

/// [`RequestOutcome::status`] when the client went away before any final
/// status could be sent (nginx's convention).
pub const STATUS_CLIENT_GONE: u16 = 499;

/// gRPC status `UNAVAILABLE`: counted as a failure of the endpoint.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// How a request (or an L4 stream) ended, whatever the protocol: for
/// metrics, outlier ejection, trace events and logs.
#[derive(Clone, Debug)]
pub struct RequestOutcome {
    /// The target the request was sent to (or, for a `502` after failed
    /// connects, the last one tried); `None` when rejected before routing
    /// (400/431/408/405/503).
    pub target: Option<Target>,
    /// HTTP status sent to the client (the upstream's, or ours).
    /// [`STATUS_CLIENT_GONE`] when the client went away before any final
    /// status could be sent; [`STATUS_L4`] for an L4 stream.
    pub status: u16,
    /// The gRPC status of a gRPC call (from the trailers, or ours), when
    /// one was sent.
    pub grpc_status: Option<u32>,
    /// The router answered itself (reject, no endpoint, timeout, malformed)
    /// instead of forwarding the upstream's answer.
    pub by_router: bool,
    /// From the complete request head (an L4 stream: from its start) to the
    /// end of the exchange.
    pub duration: Duration,
    /// Why we produced an error status (or cut the exchange short), if we did.
    pub error: Option<String>,
}

impl RequestOutcome {
    /// Whether it counts as a failure of the endpoint it went to (outlier
    /// ejection): a 5xx, or gRPC `UNAVAILABLE`.
    pub fn is_failure(&self) -> bool {
        self.status >= 500 || self.grpc_status == Some(GRPC_UNAVAILABLE)
    }
}

/// One routed request (or L4 stream) in flight: the router's state for it
/// (the endpoint's in-flight count, the labels of its decision). Many can
/// be in flight on one connection at once (HTTP/2 streams). The engine
/// gives it back with the outcome; dropped unfinished (the decision was
/// replaced after a failed connect) it only releases what it holds.
pub trait InFlight: Send + Sync {
    /// Report how the request ended.
    fn finish(self: Box<Self>, outcome: RequestOutcome);
}

/// A routing decision with the request's in-flight state.
pub struct Routed {
    /// Where it goes.
    pub route: Route,
    /// Give it back with [`InFlight::finish`].
    pub request: Box<dyn InFlight>,
}

/// The routing decisions for one client connection (the agent gives one per
/// accepted connection).
pub trait Routes: Send + Sync + 'static {
    /// Pick a target for this request. `exclude` holds endpoints whose connect
    /// already failed for this request; return `Reject` when none is left.
    fn route_http(&self, request: &RequestView<'_>, exclude: &[SocketAddr]) -> Routed;
    /// Pick a target for an opaque (non-HTTP) stream.
    fn route_l4(&self, exclude: &[SocketAddr]) -> Routed;
    /// Report a request that ended before it could be routed (malformed,
    /// too large, too slow).
    fn observe_unrouted(&self, outcome: RequestOutcome);
    /// The connection is served as `protocol` (`http`, `h2` or `tcp`), known
    /// before its first request is routed.
    fn serving(&self, protocol: &'static str);
}

/// Connect attempts per request (or L4 stream) before giving up, whatever
/// the router says.
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 32;

/// The status a [`Route::Reject`] is answered with: its own, unless it
/// cannot be an answer with a body (outside 200..=599, 204, 304): 503.
pub(crate) fn reject_status(status: u16) -> u16 {
    if (200..=599).contains(&status) && status != 204 && status != 304 {
        status
    } else {
        503
    }
}

/// `a, b, c`: the endpoints tried, for an error message.
pub(crate) fn join_endpoints(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the agent knows about the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Look at the client's first bytes: HTTP/1.x, HTTP/2 (preface) or L4
    /// passthrough.
    Sniff,
    /// HTTP: HTTP/2 when the client starts with the preface, else HTTP/1.x.
    Http,
    /// Always HTTP/2 (h2c with prior knowledge, e.g. gRPC).
    Http2,
    /// Always L4 passthrough.
    Opaque,
}

/// The engine a connection is served by.
#[derive(Clone, Copy)]
enum Engine {
    H1,
    H2,
    L4,
}

impl Engine {
    /// The protocol's name, as `laneway conns` shows it.
    fn protocol(self) -> &'static str {
        match self {
            Engine::H1 => "http",
            Engine::H2 => "h2",
            Engine::L4 => "tcp",
        }
    }
}

/// How long a connection on which nothing is in flight (idle between
/// requests, or on which nobody spoke yet) may still start something once
/// the router drains: a client may be sending right now.
pub(crate) const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(1000);

/// The instant `after` from now, saturating far in the future instead of
/// overflowing on absurd configured durations.
pub(crate) fn deadline_after(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

/// Serve one accepted client connection until it closes. Never panics, never
/// hangs past the timeouts.
pub async fn serve_connection(
    client: tokio::net::TcpStream,
    routes: Arc<dyn Routes>,
    pool: Pool,
    cfg: Arc<ProxyConfig>,
    mode: Protocol,
) {
    if let Err(e) = client.set_nodelay(true) {
        tracing::debug!(error = %e, "set TCP_NODELAY on client socket");
    }
    let sniffed = match mode {
        Protocol::Http2 => sniff::Sniffed::Http2,
        Protocol::Opaque => sniff::Sniffed::Opaque,
        Protocol::Sniff | Protocol::Http => {
            match sniff::sniff(&client, cfg.sniff_timeout, cfg.header_timeout).await {
                Ok(sniffed) => sniffed,
                Err(e) => {
                    tracing::debug!(error = %e, "client socket error while sniffing");
                    return;
                }
            }
        }
    };
    let (client, engine) = match (sniffed, mode) {
        (sniff::Sniffed::Http2, _) => (client, Engine::H2),
        (sniff::Sniffed::Http1, _) => (client, Engine::H1),
        // A declared HTTP port is HTTP/1.x unless it says otherwise: the
        // engine answers garbage with 400, and waits for a quiet client.
        (sniff::Sniffed::Opaque | sniff::Sniffed::Silent, Protocol::Http) => (client, Engine::H1),
        (sniff::Sniffed::Opaque, _) => (client, Engine::L4),
        (sniff::Sniffed::Closed, _) => return,
        // Server-first, or a client connected ahead of its first request:
        // an L4 stream until the first word, which may still be HTTP.
        (sniff::Sniffed::Silent, _) => {
            routes.serving(Engine::L4.protocol());
            match Box::pin(l4::passthrough_silent(client, &*routes, &pool, &cfg)).await {
                l4::Silent::Served => return,
                l4::Silent::SpokeHttp(client, sniff::Sniffed::Http2) => (client, Engine::H2),
                l4::Silent::SpokeHttp(client, _) => (client, Engine::H1),
            }
        }
    };
    routes.serving(engine.protocol());
    match engine {
        Engine::L4 => Box::pin(l4::passthrough(client, &*routes, &pool)).await,
        Engine::H1 => h1::serve(client, &*routes, &pool, &cfg).await,
        // Boxed: a connection's task is as large as its largest engine's
        // state, and an idle HTTP/1 connection must not carry HTTP/2's.
        Engine::H2 => Box::pin(h2::serve(client, routes, Arc::new(pool), cfg)).await,
    }
}

//! The router's per-connection engine.
//!
//! Every connection the eBPF programs redirect to the node router is handed to
//! [`serve_connection`]. Depending on [`Protocol`] (and, for
//! [`Protocol::Sniff`], on the client's first bytes) the connection is served
//! either as HTTP/1.x, one routing decision per request, or as an opaque L4
//! stream copied byte for byte to one endpoint.
//!
//! Routing *decisions* are not made here: the engine asks a [`Routes`]
//! implementation for a [`Route`] for every request (or for the L4 stream) and
//! reports every request's [`RequestOutcome`] back to it.
//!
//! Submodules:
//! - `sniff`: decides HTTP vs opaque from peeked bytes.
//! - `head`: request/response head analysis and re-serialisation.
//! - `body`: message body framing, including a streaming chunked decoder.
//! - `pool`: upstream connect (from the calling pod's network namespace)
//!   and the pools of idle upstream connections, per caller and endpoint.
//! - `http`: the HTTP/1.x keep-alive request loop.
//! - `l4`: opaque passthrough and raw tunnels (also used after `101`).

pub(crate) mod body;
pub(crate) mod head;
mod http;
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

/// The request facts the router needs to decide.
pub struct RequestHead<'a> {
    /// Request method, e.g. `GET`.
    pub method: &'a str,
    /// Request target as sent by the client, e.g. `/api?x=1`.
    pub path: &'a str,
    /// All request headers in the order the client sent them (including the
    /// tag header, if the client sent one).
    pub headers: &'a [httparse::Header<'a>],
}

impl RequestHead<'_> {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
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

/// A routing decision.
#[derive(Clone, Debug)]
pub enum Route {
    /// Send the request (or stream) to this target.
    Forward(Target),
    /// Answer the client with this status (e.g. 503) and a plain-text body;
    /// the connection is kept if the request body could be skipped. For L4
    /// streams the client connection is simply closed.
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

/// How a request (or an L4 stream) ended, for metrics and logs (the agent
/// implements [`Routes::observe`]).
#[derive(Clone, Debug)]
pub struct RequestOutcome {
    /// The target the request was sent to (or, for a `502` after failed
    /// connects, the last one tried); `None` when rejected before routing
    /// (400/431/408/405/503).
    pub target: Option<Target>,
    /// Status sent to the client (the upstream's, or ours). `499` when the
    /// client went away before any final status could be sent;
    /// [`STATUS_L4`] for an L4 stream.
    pub status: u16,
    /// From the complete request head (an L4 stream: from its start) to the
    /// end of the exchange.
    pub duration: Duration,
    /// Why we produced an error status (or cut the exchange short), if we did.
    pub error: Option<String>,
}

/// The routing decisions for one client connection (the agent gives one per
/// accepted connection).
pub trait Routes: Send + Sync + 'static {
    /// Pick a target for this request. `exclude` holds endpoints whose connect
    /// already failed for this request; return `Reject` when none is left.
    fn route_http(&self, head: &RequestHead<'_>, exclude: &[SocketAddr]) -> Route;
    /// Pick a target for an opaque (non-HTTP) stream.
    fn route_l4(&self, exclude: &[SocketAddr]) -> Route;
    /// Called once per HTTP request when it completes (or fails), and once
    /// per L4 stream when it ends.
    fn observe(&self, outcome: RequestOutcome);
}

/// What the agent knows about the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Look at the client's first bytes: HTTP/1.x or L4 passthrough.
    Sniff,
    /// Always HTTP/1.x.
    Http,
    /// Always L4 passthrough.
    Opaque,
}

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
    let protocol = match mode {
        Protocol::Http | Protocol::Opaque => mode,
        Protocol::Sniff => match sniff::sniff(&client, cfg.sniff_timeout, cfg.header_timeout).await
        {
            Ok(sniff::Sniffed::Http) => Protocol::Http,
            Ok(sniff::Sniffed::Opaque) => Protocol::Opaque,
            Ok(sniff::Sniffed::Closed) => return,
            Err(e) => {
                tracing::debug!(error = %e, "client socket error while sniffing");
                return;
            }
        },
    };
    match protocol {
        Protocol::Opaque => Box::pin(l4::passthrough(client, &*routes, &pool)).await,
        _ => http::serve(client, &*routes, &pool, &cfg).await,
    }
}

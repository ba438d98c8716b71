//! The HTTP/1.x engine: the keep-alive request loop of one client connection.
//!
//! For every request: read and parse the head (timeouts and size limits),
//! ask the router, connect (or reuse a pooled connection, retrying other
//! endpoints on connect failure), write the rewritten head, then stream the
//! request body upstream *concurrently* with reading the response, forward the
//! response (1xx interim responses included) and decide whether the client
//! and upstream connections can carry another request. A `101` answer to an
//! upgrade request turns the connection into a raw tunnel.
//!
//! Buffers (client read buffer, upstream read buffer, head buffers) are
//! reused for every request of a client connection while requests keep
//! coming, and given back while it waits idle for the next one: an idle
//! keep-alive connection holds no buffer memory.
//!
//! Submodules: `head` (request/response head analysis and re-serialisation)
//! and `body` (message body framing, including a streaming chunked decoder).

pub(crate) mod body;
pub(crate) mod head;

use std::{io, net::SocketAddr, pin::pin, time::Duration};

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use self::{
    body::Framing,
    head::{RequestInfo, ResponseInfo},
};
use super::{
    InFlight, MAX_CONNECT_ATTEMPTS, ProxyConfig, RequestOutcome, RequestView, Route, Routed,
    Routes, STATUS_CLIENT_GONE, Target, deadline_after, join_endpoints, l4,
    pool::{self, Pool},
    reject_status,
};

/// Initial size of the per-connection read buffers.
const READ_BUF: usize = 16 * 1024;
/// Initial size of the buffers request and response heads are rewritten in.
const HEAD_BUF: usize = 1024;
/// A rejected request's body is read and discarded up to this size to keep
/// the connection; larger bodies close it.
const DRAIN_MAX: u64 = 256 * 1024;
/// When we close a connection whose input we did not fully read, we keep
/// reading (and discarding) for this long after our FIN so that the client
/// gets our response instead of a reset.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many bytes are discarded while lingering.
const LINGER_MAX: usize = 1 << 20;

/// Why a request did not get the upstream's response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The request head is malformed, too large or has invalid framing.
    #[error("malformed request: {0}")]
    BadRequest(#[source] head::Error),
    /// The request head did not arrive in time.
    #[error("request head not received within {0:?}")]
    HeadTimeout(Duration),
    /// CONNECT requests are not served (this is not a forward proxy).
    #[error("CONNECT is not supported")]
    ConnectMethod,
    /// The router rejected the request.
    #[error("rejected by router")]
    Rejected,
    /// Every endpoint the router offered refused the connection.
    #[error("no upstream endpoint reachable (tried {tried}): {last}")]
    NoEndpoint {
        /// The endpoints tried, comma separated.
        tried: String,
        /// The last connect error.
        #[source]
        last: pool::Error,
    },
    /// Connecting a fresh connection (after a dead pooled one) failed.
    #[error("upstream connect: {0}")]
    UpstreamConnect(#[source] pool::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before the response head")]
    UpstreamClosed,
    /// Reading the upstream failed before a complete response head.
    #[error("upstream read: {0}")]
    UpstreamRead(#[source] io::Error),
    /// The upstream's response head is not valid HTTP/1.x.
    #[error("invalid response head from upstream: {0}")]
    BadResponse(#[source] head::Error),
    /// `101` to a request that did not ask for an upgrade.
    #[error("upstream switched protocols without an upgrade request")]
    UnexpectedSwitch,
    /// No response head within the response timeout.
    #[error("no response head from upstream within {0:?}")]
    ResponseTimeout(Duration),
    /// The client side of the request body failed (framing, timeout, EOF).
    #[error("request body: {0}")]
    RequestBody(#[source] body::Error),
    /// The upstream side of the response body failed mid-response.
    #[error("upstream failed mid-response: {0}")]
    ResponseBody(#[source] body::Error),
    /// Writing to the client failed.
    #[error("client went away: {0}")]
    ClientGone(#[source] body::Error),
}

/// Result of reading a request head.
enum HeadRead {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    /// Nothing (more) to serve: EOF, idle timeout, read error.
    Closed,
    /// Answer with this status and close.
    Failed(u16, Error),
}

/// What to do with the client connection after a request.
enum Next {
    KeepAlive,
    Close { linger: bool },
    Tunnel(TcpStream),
}

/// Result of parsing, routing and connecting one request.
enum Decision {
    /// Answer with this status and close.
    Invalid(u16, Error),
    /// Answer without forwarding (router reject, or no endpoint reachable).
    Reject {
        info: RequestInfo,
        request: Box<dyn InFlight>,
        status: u16,
        body: String,
        target: Option<Target>,
        /// The `x-laneway-route` value, when asked for.
        route_header: Option<String>,
        error: Error,
    },
    /// Send the request over `upstream`.
    Forward {
        info: RequestInfo,
        request: Box<dyn InFlight>,
        target: Target,
        upstream: TcpStream,
        reused: bool,
    },
}

/// Result of one request/response exchange over one upstream connection.
enum Exchange {
    /// A pooled connection was dead before any response byte; nothing of the
    /// request was consumed from the client: try again on a fresh one.
    Retry(Error),
    /// The upstream's final response was (at least partly) forwarded, or the
    /// client went away.
    Done {
        status: u16,
        keep_client: bool,
        pool_upstream: bool,
        error: Option<Error>,
        linger: bool,
    },
    /// Nothing final was forwarded: answer with this status.
    Fail {
        status: u16,
        error: Error,
        keep_client: bool,
    },
    /// `101` forwarded: tunnel the two connections.
    Tunnel,
}

/// Failures while waiting for the final response head.
enum RespHeadError {
    Timeout,
    Closed { any_bytes: bool },
    Read { error: io::Error, any_bytes: bool },
    Invalid(head::Error),
    UnexpectedSwitch,
    ClientWrite(body::Error),
    ClientBody(body::Error),
}

/// Facts for the [`RequestOutcome`], filled in while a request is handled.
#[derive(Default)]
struct Outcome {
    /// The routed request, once the router decided.
    request: Option<Box<dyn InFlight>>,
    target: Option<Target>,
    status: u16,
    by_router: bool,
    error: Option<Error>,
}

/// Per-connection state, reused for every request on the connection.
struct Conn<'a> {
    cfg: &'a ProxyConfig,
    routes: &'a dyn Routes,
    pool: &'a Pool,
    /// Bytes read from the client and not yet consumed.
    cbuf: BytesMut,
    /// Bytes read from the upstream and not yet consumed.
    ubuf: BytesMut,
    /// The request head written upstream.
    req_head: Vec<u8>,
    /// Response heads (forwarded or generated) written to the client.
    resp_head: Vec<u8>,
    /// Endpoints whose connect failed for the current request.
    exclude: Vec<SocketAddr>,
}

/// Serve HTTP/1.x requests on `client` until the connection closes.
pub(crate) async fn serve(
    mut client: TcpStream,
    routes: &dyn Routes,
    pool: &Pool,
    cfg: &ProxyConfig,
) {
    let mut drain = pool.drain_signal();
    let mut conn = Conn {
        cfg,
        routes,
        pool,
        // Allocated when the first request arrives (see `take_buffers`).
        cbuf: BytesMut::new(),
        ubuf: BytesMut::new(),
        req_head: Vec::new(),
        resp_head: Vec::new(),
        exclude: Vec::new(),
    };
    loop {
        let read_start = Instant::now();
        let next = match conn.read_head(&mut client, &mut drain).await {
            // Boxed: a request's state is large (heads, bodies, retries)
            // and lives only while it is served, not while the connection
            // waits idle (every connection's task holds its own future).
            HeadRead::Complete(head_len) => Box::pin(conn.request(&mut client, head_len)).await,
            HeadRead::Closed => return,
            HeadRead::Failed(status, error) => {
                tracing::debug!(status, error = %error, "bad request head");
                let body = format!("{error}\n");
                conn.send_error(&mut client, status, &body, None, true, true)
                    .await;
                conn.routes.observe_unrouted(RequestOutcome {
                    target: None,
                    status,
                    grpc_status: None,
                    by_router: true,
                    duration: read_start.elapsed(),
                    error: Some(error.to_string()),
                });
                Next::Close { linger: true }
            }
        };
        match next {
            Next::KeepAlive => {}
            Next::Close { linger } => {
                conn.close(&mut client, linger).await;
                return;
            }
            Next::Tunnel(mut upstream) => {
                match Box::pin(l4::tunnel(
                    &mut client,
                    &conn.cbuf,
                    &mut upstream,
                    &conn.ubuf,
                ))
                .await
                {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection finished"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                }
                return;
            }
        }
    }
}

fn bad_request_status(e: &head::Error) -> u16 {
    match e {
        head::Error::TooManyHeaders | head::Error::TooLarge(_) => 431,
        _ => 400,
    }
}

impl Conn<'_> {
    /// Read until `cbuf` starts with a complete request head.
    async fn read_head(
        &mut self,
        client: &mut TcpStream,
        drain: &mut tokio::sync::watch::Receiver<bool>,
    ) -> HeadRead {
        let max = self.cfg.max_header_bytes;
        let idle_deadline = deadline_after(self.cfg.idle_timeout);
        let mut head_deadline =
            (!self.cbuf.is_empty()).then(|| deadline_after(self.cfg.header_timeout));
        let mut scanned: usize = 0;
        let mut drain_deadline = None;
        loop {
            if !self.cbuf.is_empty() {
                if let Some(end) = head::find_head_end(&self.cbuf, scanned.saturating_sub(3)) {
                    if end > max {
                        return HeadRead::Failed(
                            431,
                            Error::BadRequest(head::Error::TooLarge(max)),
                        );
                    }
                    return HeadRead::Complete(end);
                }
                scanned = self.cbuf.len();
                if self.cbuf.len() > max {
                    return HeadRead::Failed(431, Error::BadRequest(head::Error::TooLarge(max)));
                }
                // Reject garbage early instead of waiting for a blank line.
                let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
                if let Err(e) = httparse::Request::new(&mut headers).parse(&self.cbuf) {
                    let e = head::Error::from(e);
                    return HeadRead::Failed(bad_request_status(&e), Error::BadRequest(e));
                }
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            // While the router drains, a connection idle between requests
            // gets a short grace to send its next request (answered with
            // `Connection: close`) instead of being closed under a client
            // that may be sending right now.
            let idle = self.cbuf.is_empty();
            if idle && drain_deadline.is_none() && *drain.borrow() {
                drain_deadline = Some(deadline_after(super::DRAIN_IDLE_GRACE));
            }
            let deadline = match (head_deadline, drain_deadline) {
                (None, Some(d)) => d.min(deadline),
                _ => deadline,
            };
            let read = if idle && !self.holds_buffers() {
                // Wait for the next request holding no buffers: they are
                // taken back once it arrives.
                let ready = tokio::select! {
                    r = tokio::time::timeout_at(deadline, client.readable()) => r,
                    _ = drain.changed(), if drain_deadline.is_none() => continue,
                };
                match ready {
                    Ok(Ok(())) => {
                        self.take_buffers();
                        continue;
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(elapsed) => Err(elapsed),
                }
            } else {
                if self.cbuf.capacity() - self.cbuf.len() < READ_BUF / 4 {
                    self.cbuf.reserve(READ_BUF);
                }
                if idle {
                    // Between requests: give the buffers back before
                    // waiting, so idle keep-alive connections cost no
                    // buffer memory. Polled once rather than `try_read_buf`:
                    // `poll_read` forgets the socket's readiness after a
                    // short read, so this check after a request costs no
                    // `recvfrom` that could only say EAGAIN.
                    match client.read_buf(&mut self.cbuf).now_or_never() {
                        None => {
                            self.release_buffers();
                            continue;
                        }
                        Some(read) => Ok(read),
                    }
                } else {
                    tokio::time::timeout_at(deadline, client.read_buf(&mut self.cbuf)).await
                }
            };
            match read {
                Err(_) => {
                    return match head_deadline {
                        Some(_) => {
                            HeadRead::Failed(408, Error::HeadTimeout(self.cfg.header_timeout))
                        }
                        None => HeadRead::Closed,
                    };
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "client read error");
                    return HeadRead::Closed;
                }
                Ok(Ok(0)) => return HeadRead::Closed,
                Ok(Ok(_)) => {
                    if head_deadline.is_none() {
                        head_deadline = Some(deadline_after(self.cfg.header_timeout));
                    }
                }
            }
        }
    }

    /// Whether the per-connection buffers are allocated.
    fn holds_buffers(&self) -> bool {
        self.cbuf.capacity() > 0
    }

    /// Frees the (empty) per-connection buffers while the connection waits
    /// idle for its next request.
    fn release_buffers(&mut self) {
        self.cbuf = BytesMut::new();
        if self.ubuf.is_empty() {
            self.ubuf = BytesMut::new();
        }
        self.req_head = Vec::new();
        self.resp_head = Vec::new();
    }

    /// Allocates the per-connection buffers for the next request.
    fn take_buffers(&mut self) {
        self.cbuf.reserve(READ_BUF);
        self.req_head.reserve(HEAD_BUF);
        self.resp_head.reserve(HEAD_BUF);
    }

    /// Handle one request whose head is the first `head_len` bytes of `cbuf`;
    /// reports the outcome to the router exactly once.
    async fn request(&mut self, client: &mut TcpStream, head_len: usize) -> Next {
        let start = Instant::now();
        let mut out = Outcome::default();
        let next = self.handle(client, head_len, &mut out).await;
        tracing::debug!(status = out.status, "request done");
        let outcome = RequestOutcome {
            target: out.target,
            status: out.status,
            grpc_status: None,
            by_router: out.by_router,
            duration: start.elapsed(),
            error: out.error.map(|e| e.to_string()),
        };
        match out.request {
            Some(request) => request.finish(outcome),
            None => self.routes.observe_unrouted(outcome),
        }
        next
    }

    async fn handle(&mut self, client: &mut TcpStream, head_len: usize, out: &mut Outcome) -> Next {
        let decision = self.decide(head_len).await;
        self.cbuf.advance(head_len);
        match decision {
            Decision::Invalid(status, error) => {
                let body = format!("{error}\n");
                self.send_error(client, status, &body, None, true, true)
                    .await;
                out.status = status;
                out.by_router = true;
                out.error = Some(error);
                Next::Close { linger: true }
            }
            Decision::Reject {
                info,
                request,
                status,
                body,
                target,
                route_header,
                error,
            } => {
                out.request = Some(request);
                let route = route_header.as_deref();
                self.reject(client, info, (status, &body, route), target, error, out)
                    .await
            }
            Decision::Forward {
                info,
                request,
                target,
                upstream,
                reused,
            } => {
                out.request = Some(request);
                self.forward(client, info, target, upstream, reused, out)
                    .await
            }
        }
    }

    /// Parse and check the head, ask the router and connect (retrying other
    /// endpoints); when forwarding, leaves the upstream request head (tag not
    /// yet written) in `req_head`.
    async fn decide(&mut self, head_len: usize) -> Decision {
        let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let info = match req.parse(&self.cbuf[..head_len]) {
            Ok(httparse::Status::Complete(n)) if n == head_len => head::analyze_request(&req),
            Ok(_) => Err(head::Error::Incomplete),
            Err(e) => Err(e.into()),
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => return Decision::Invalid(bad_request_status(&e), Error::BadRequest(e)),
        };
        if info.is_connect {
            return Decision::Invalid(405, Error::ConnectMethod);
        }
        let fields: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
        let authority = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok());
        let view = RequestView {
            protocol: "http",
            method: req.method.unwrap_or(""),
            path: req.path.unwrap_or(""),
            authority,
            headers: &fields,
        };
        self.exclude.clear();
        let mut last_failure: Option<(Target, pool::Error)> = None;
        loop {
            let Routed { route, request } = self.routes.route_http(&view, &self.exclude);
            let target = match route {
                Route::Forward(target)
                    if !self.exclude.contains(&target.endpoint)
                        && self.exclude.len() < MAX_CONNECT_ATTEMPTS =>
                {
                    target
                }
                other => {
                    if let Some((target, last)) = last_failure.take() {
                        let tried = join_endpoints(&self.exclude);
                        let error = Error::NoEndpoint { tried, last };
                        return Decision::Reject {
                            info,
                            request,
                            status: 502,
                            body: format!("{error}\n"),
                            route_header: target.route_header.clone(),
                            target: Some(target),
                            error,
                        };
                    }
                    return match other {
                        Route::Reject {
                            status,
                            body,
                            route_header,
                        } => Decision::Reject {
                            info,
                            request,
                            status,
                            body,
                            target: None,
                            route_header,
                            error: Error::Rejected,
                        },
                        // An excluded endpoint without a recorded failure
                        // cannot happen; answer like a reject.
                        Route::Forward(target) => Decision::Reject {
                            info,
                            request,
                            status: 503,
                            body: "no upstream endpoint available\n".to_owned(),
                            route_header: target.route_header.clone(),
                            target: Some(target),
                            error: Error::Rejected,
                        },
                    };
                }
            };
            match self.pool.get(target.endpoint).await {
                Ok((upstream, reused)) => {
                    head::write_request_head(&mut self.req_head, &req, &target, info.upgrade);
                    if info.version == 0 && info.keep_alive {
                        // HTTP/1.0 closes unless asked: ask the upstream too,
                        // so the client's keep-alive can be kept.
                        self.req_head
                            .extend_from_slice(b"connection: keep-alive\r\n");
                    }
                    return Decision::Forward {
                        info,
                        request,
                        target,
                        upstream,
                        reused,
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upstream connect failed");
                    self.exclude.push(target.endpoint);
                    last_failure = Some((target, e));
                }
            }
        }
    }

    /// Answer a request ourselves with `(status, body, x-laneway-route)`;
    /// keep the connection when its body could be skipped.
    async fn reject(
        &mut self,
        client: &mut TcpStream,
        mut info: RequestInfo,
        (status, body, route): (u16, &str, Option<&str>),
        target: Option<Target>,
        error: Error,
        out: &mut Outcome,
    ) -> Next {
        let status = reject_status(status);
        let mut keep = info.keep_alive && info.version >= 1 && !self.pool.is_draining();
        if keep && !info.framing.is_empty() {
            if info.expect_continue {
                // The client waits for 100 before sending the body.
                keep = false;
            } else if let Err(e) = body::drain(
                &mut info.framing,
                client,
                &mut self.cbuf,
                DRAIN_MAX,
                self.cfg.idle_timeout,
            )
            .await
            {
                tracing::debug!(error = %e, "not skipping request body");
                keep = false;
            }
        }
        self.send_error(client, status, body, route, !keep, !info.is_head)
            .await;
        out.status = status;
        out.by_router = true;
        out.target = target;
        out.error = Some(error);
        if keep {
            Next::KeepAlive
        } else {
            Next::Close { linger: true }
        }
    }

    /// Send the request to `target` over `upstream` and forward the response.
    async fn forward(
        &mut self,
        client: &mut TcpStream,
        mut info: RequestInfo,
        target: Target,
        mut upstream: TcpStream,
        mut reused: bool,
        out: &mut Outcome,
    ) -> Next {
        head::finish_request_head(&mut self.req_head, &target);
        let mut framing = std::mem::replace(&mut info.framing, Framing::Empty);
        let no_body = framing.is_empty();
        let mut retried = false;
        let result = loop {
            let can_retry =
                !retried && no_body && (reused || (self.cfg.retry_idempotent && info.idempotent));
            match self
                .exchange(
                    client,
                    &mut upstream,
                    &info,
                    &mut framing,
                    &target,
                    can_retry,
                )
                .await
            {
                Exchange::Retry(error) => {
                    tracing::debug!(error = %error, reused, "upstream failed before answering, retrying once on a fresh connection");
                    retried = true;
                    match self.pool.connect(target.endpoint).await {
                        Ok(fresh) => {
                            upstream = fresh;
                            reused = false;
                        }
                        Err(e) => {
                            break Exchange::Fail {
                                status: 502,
                                error: Error::UpstreamConnect(e),
                                keep_client: info.keep_alive,
                            };
                        }
                    }
                }
                other => break other,
            }
        };
        let route = target.route_header.as_deref();
        let next = match result {
            Exchange::Done {
                status,
                keep_client,
                pool_upstream,
                error,
                linger,
            } => {
                if pool_upstream {
                    self.pool.put(target.endpoint, upstream);
                }
                out.status = status;
                out.error = error;
                if keep_client {
                    Next::KeepAlive
                } else {
                    Next::Close { linger }
                }
            }
            Exchange::Fail {
                status,
                error,
                keep_client,
            } => {
                let keep = keep_client && info.version >= 1;
                let body = format!("{error}\n");
                self.send_error(client, status, &body, route, !keep, !info.is_head)
                    .await;
                out.status = status;
                out.by_router = true;
                out.error = Some(error);
                if keep {
                    Next::KeepAlive
                } else {
                    Next::Close { linger: true }
                }
            }
            Exchange::Retry(error) => {
                let body = format!("{error}\n");
                self.send_error(client, 502, &body, route, true, !info.is_head)
                    .await;
                out.status = 502;
                out.by_router = true;
                out.error = Some(error);
                Next::Close { linger: true }
            }
            Exchange::Tunnel => {
                out.status = 101;
                Next::Tunnel(upstream)
            }
        };
        out.target = Some(target);
        next
    }

    /// One request/response exchange: write the head, stream the request body
    /// concurrently with reading the response, forward the response.
    async fn exchange(
        &mut self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        info: &RequestInfo,
        framing: &mut Framing,
        target: &Target,
        can_retry: bool,
    ) -> Exchange {
        let cfg = self.cfg;
        let Conn {
            cbuf,
            ubuf,
            req_head,
            resp_head,
            pool,
            ..
        } = self;
        ubuf.clear();
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let mut body_fut = pin!(body::forward(
            framing,
            &mut cr,
            cbuf,
            &mut uw,
            req_head,
            cfg.idle_timeout
        ));
        let mut body_res: Option<Result<(), body::Error>> = None;
        // Armed once the request is fully sent (or can no longer be sent).
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed = false;

        let head_res = {
            let mut head_fut = pin!(read_response_head(
                &mut ur,
                ubuf,
                &mut cw,
                info,
                cfg.max_header_bytes,
                cfg.idle_timeout
            ));
            loop {
                tokio::select! {
                    biased;
                    r = &mut body_fut, if body_res.is_none() => {
                        match r {
                            Err(e) if !e.is_write_side() => break Err(RespHeadError::ClientBody(e)),
                            r => {
                                if let Err(e) = &r {
                                    tracing::debug!(error = %e, "writing request to upstream failed");
                                }
                                timer.as_mut().reset(deadline_after(cfg.response_timeout));
                                armed = true;
                                body_res = Some(r);
                            }
                        }
                    }
                    r = &mut head_fut => break r,
                    () = &mut timer, if armed => break Err(RespHeadError::Timeout),
                }
            }
        };
        let body_ok = matches!(body_res, Some(Ok(())));
        let keep_after_error = info.keep_alive && body_ok;
        let (head_len, rinfo) = match head_res {
            Ok(x) => x,
            Err(e) => {
                return match e {
                    RespHeadError::Closed { any_bytes: false } if can_retry => {
                        Exchange::Retry(Error::UpstreamClosed)
                    }
                    RespHeadError::Read {
                        error,
                        any_bytes: false,
                    } if can_retry => Exchange::Retry(Error::UpstreamRead(error)),
                    RespHeadError::Closed { .. } => Exchange::Fail {
                        status: 502,
                        error: Error::UpstreamClosed,
                        keep_client: keep_after_error,
                    },
                    RespHeadError::Read { error, .. } => Exchange::Fail {
                        status: 502,
                        error: Error::UpstreamRead(error),
                        keep_client: keep_after_error,
                    },
                    RespHeadError::Invalid(e) => Exchange::Fail {
                        status: 502,
                        error: Error::BadResponse(e),
                        keep_client: keep_after_error,
                    },
                    RespHeadError::UnexpectedSwitch => Exchange::Fail {
                        status: 502,
                        error: Error::UnexpectedSwitch,
                        keep_client: keep_after_error,
                    },
                    RespHeadError::Timeout => Exchange::Fail {
                        status: 504,
                        error: Error::ResponseTimeout(cfg.response_timeout),
                        keep_client: keep_after_error,
                    },
                    RespHeadError::ClientWrite(e) => Exchange::Done {
                        status: STATUS_CLIENT_GONE,
                        keep_client: false,
                        pool_upstream: false,
                        error: Some(Error::ClientGone(e)),
                        linger: false,
                    },
                    RespHeadError::ClientBody(e) if e.is_framing() => Exchange::Fail {
                        status: 400,
                        error: Error::RequestBody(e),
                        keep_client: false,
                    },
                    RespHeadError::ClientBody(e @ body::Error::ReadTimeout) => Exchange::Fail {
                        status: 408,
                        error: Error::RequestBody(e),
                        keep_client: false,
                    },
                    RespHeadError::ClientBody(e) => Exchange::Done {
                        status: STATUS_CLIENT_GONE,
                        keep_client: false,
                        pool_upstream: false,
                        error: Some(Error::RequestBody(e)),
                        linger: false,
                    },
                };
            }
        };
        let status = rinfo.status;
        let route = target.route_header.as_deref();

        if status == 101 {
            // Only returned for upgrade requests. The request body (normally
            // empty) must be complete before the protocol switches.
            if body_res.is_none() {
                body_res = Some(body_fut.as_mut().await);
            }
            if let Some(Err(e)) = body_res {
                return Exchange::Done {
                    status: STATUS_CLIENT_GONE,
                    keep_client: false,
                    pool_upstream: false,
                    error: Some(Error::RequestBody(e)),
                    linger: false,
                };
            }
            head::write_response_head(resp_head, &ubuf[..head_len], route, None);
            ubuf.advance(head_len);
            return match tokio::time::timeout(cfg.idle_timeout, cw.write_all(resp_head)).await {
                Ok(Ok(())) => Exchange::Tunnel,
                Ok(Err(e)) => Exchange::Done {
                    status,
                    keep_client: false,
                    pool_upstream: false,
                    error: Some(Error::ClientGone(body::Error::Write(e))),
                    linger: false,
                },
                Err(_) => Exchange::Done {
                    status,
                    keep_client: false,
                    pool_upstream: false,
                    error: Some(Error::ClientGone(body::Error::WriteTimeout)),
                    linger: false,
                },
            };
        }

        let close_client = !info.keep_alive || !rinfo.keep_alive || !body_ok || pool.is_draining();
        head::write_response_head(
            resp_head,
            &ubuf[..head_len],
            route,
            head::connection_field(close_client, info, &rinfo),
        );
        ubuf.advance(head_len);
        let mut rframing = rinfo.framing;
        let resp_res = {
            let mut resp_fut = pin!(body::forward(
                &mut rframing,
                &mut ur,
                ubuf,
                &mut cw,
                resp_head,
                cfg.idle_timeout
            ));
            loop {
                tokio::select! {
                    biased;
                    r = &mut body_fut, if body_res.is_none() => {
                        match r {
                            Err(e) if !e.is_write_side() => break Err(e),
                            r => body_res = Some(r),
                        }
                    }
                    r = &mut resp_fut => break Ok(r),
                }
            }
        };
        match resp_res {
            // The client's request body broke while the response streamed.
            Err(e) => Exchange::Done {
                status,
                keep_client: false,
                pool_upstream: false,
                linger: e.is_framing(),
                error: Some(Error::RequestBody(e)),
            },
            Ok(Ok(())) => {
                let body_ok = matches!(body_res, Some(Ok(())));
                Exchange::Done {
                    status,
                    keep_client: !close_client,
                    // The client's own `Connection` fields are not
                    // forwarded: an HTTP/1.1 upstream connection outlives a
                    // client that closes (an HTTP/1.0 request asks the
                    // upstream to close unless it asked for keep-alive).
                    pool_upstream: rinfo.keep_alive
                        && (info.version >= 1 || info.keep_alive)
                        && body_ok
                        && ubuf.is_empty(),
                    error: None,
                    linger: !body_ok,
                }
            }
            Ok(Err(e)) if e.is_write_side() => Exchange::Done {
                status,
                keep_client: false,
                pool_upstream: false,
                error: Some(Error::ClientGone(e)),
                linger: false,
            },
            Ok(Err(e)) => Exchange::Done {
                status,
                keep_client: false,
                pool_upstream: false,
                error: Some(Error::ResponseBody(e)),
                linger: !matches!(body_res, Some(Ok(()))),
            },
        }
    }

    /// Write a response we generate ourselves.
    async fn send_error(
        &mut self,
        client: &mut TcpStream,
        status: u16,
        body: &str,
        route: Option<&str>,
        close: bool,
        include_body: bool,
    ) {
        head::write_error_response(
            &mut self.resp_head,
            status,
            body,
            route,
            close,
            include_body,
        );
        match tokio::time::timeout(self.cfg.idle_timeout, client.write_all(&self.resp_head)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, status, "writing error response failed"),
            Err(_) => tracing::debug!(status, "writing error response timed out"),
        }
    }

    /// Close the client connection: FIN first, then, if input may be left
    /// unread, keep reading for a moment so the client sees our response
    /// rather than a reset.
    async fn close(&mut self, client: &mut TcpStream, linger: bool) {
        let linger = linger || !self.cbuf.is_empty();
        if tokio::time::timeout(LINGER_TIMEOUT, client.shutdown())
            .await
            .is_err()
        {
            return;
        }
        if !linger {
            return;
        }
        let deadline = Instant::now() + LINGER_TIMEOUT;
        let mut discarded = 0;
        loop {
            self.cbuf.clear();
            self.cbuf.reserve(READ_BUF);
            match tokio::time::timeout_at(deadline, client.read_buf(&mut self.cbuf)).await {
                Ok(Ok(n)) if n > 0 => {
                    discarded += n;
                    if discarded >= LINGER_MAX {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Read response heads until the final one, forwarding 1xx interim responses
/// to the client (HTTP/1.1 clients only). Returns the final head's length
/// (it is at the start of `ubuf`) and its facts.
async fn read_response_head<R, W>(
    ur: &mut R,
    ubuf: &mut BytesMut,
    cw: &mut W,
    info: &RequestInfo,
    max: usize,
    io_timeout: Duration,
) -> Result<(usize, ResponseInfo), RespHeadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut seen_any = false;
    loop {
        let mut scanned: usize = 0;
        let head_len = loop {
            if let Some(end) = head::find_head_end(ubuf, scanned.saturating_sub(3)) {
                break end;
            }
            if ubuf.len() > max {
                return Err(RespHeadError::Invalid(head::Error::TooLarge(max)));
            }
            scanned = ubuf.len();
            if ubuf.capacity() - ubuf.len() < READ_BUF / 4 {
                ubuf.reserve(READ_BUF);
            }
            match ur.read_buf(ubuf).await {
                Ok(0) => {
                    return Err(RespHeadError::Closed {
                        any_bytes: seen_any || !ubuf.is_empty(),
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    return Err(RespHeadError::Read {
                        error,
                        any_bytes: seen_any || !ubuf.is_empty(),
                    });
                }
            }
        };
        if head_len > max {
            return Err(RespHeadError::Invalid(head::Error::TooLarge(max)));
        }
        let rinfo = head::parse_response(&ubuf[..head_len], info.is_head)
            .map_err(RespHeadError::Invalid)?;
        if !(100..200).contains(&rinfo.status) {
            return Ok((head_len, rinfo));
        }
        if rinfo.status == 101 {
            return if info.upgrade {
                Ok((head_len, rinfo))
            } else {
                Err(RespHeadError::UnexpectedSwitch)
            };
        }
        seen_any = true;
        if info.version >= 1 {
            match tokio::time::timeout(io_timeout, cw.write_all(&ubuf[..head_len])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RespHeadError::ClientWrite(body::Error::Write(e))),
                Err(_) => return Err(RespHeadError::ClientWrite(body::Error::WriteTimeout)),
            }
        }
        ubuf.advance(head_len);
    }
}

//! One HTTP/2 stream: route it, open a stream to the endpoint, relay the
//! request and the response concurrently (bidirectional streaming), pass
//! resets both ways, and report its outcome once.

use std::{future::poll_fn, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::{RecvStream, SendStream, server::SendResponse};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, request::Parts};
use tokio::time::Instant;

use super::{
    Shared, grpc,
    relay::{self, Sent},
    upstream::{self, Lease},
};
use crate::proxy::{
    InFlight, MAX_CONNECT_ATTEMPTS, RequestOutcome, RequestView, Route, Routed, STATUS_CLIENT_GONE,
    Target, deadline_after, join_endpoints, reject_status,
};

/// Times a stream the upstream refused (REFUSED_STREAM, or above a GOAWAY's
/// last stream id) is sent again on another connection.
const MAX_REFUSED_RETRIES: usize = 2;

/// Why a stream did not get the upstream's response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// CONNECT is not served (this is not a forward proxy).
    #[error("CONNECT is not supported")]
    ConnectMethod,
    /// The router rejected the request.
    #[error("rejected by router")]
    Rejected,
    /// Every endpoint the router offered failed to connect.
    #[error("no upstream endpoint reachable (tried {tried}): {last}")]
    NoEndpoint {
        /// The endpoints tried, comma separated.
        tried: String,
        /// The last error.
        #[source]
        last: upstream::Error,
    },
    /// The request could not be written as an upstream request.
    #[error("malformed request: {0}")]
    BadRequest(#[source] http::Error),
    /// The upstream refused or failed the stream before a response head.
    #[error("upstream: {0}")]
    Upstream(#[source] h2::Error),
    /// No response head within the response timeout (or the call's
    /// `grpc-timeout`).
    #[error("no response head from upstream within {0:?}")]
    ResponseTimeout(Duration),
    /// The client reset the stream or went away.
    #[error("client: {0}")]
    Client(#[source] relay::Error),
    /// The upstream reset the stream or went away mid-response.
    #[error("upstream failed mid-response: {0}")]
    ResponseBody(#[source] relay::Error),
}

/// Facts for the [`RequestOutcome`], filled in while the stream is served.
#[derive(Default)]
struct Outcome {
    request: Option<Box<dyn InFlight>>,
    target: Option<Target>,
    status: u16,
    grpc_status: Option<u32>,
    by_router: bool,
    error: Option<Error>,
}

/// Serve one stream; reports its outcome exactly once.
pub(super) async fn serve(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
) {
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let mut out = Outcome::default();
    let mut client = ClientSide {
        body,
        respond,
        sent: Sent::keeping(),
    };
    handle(&shared, &parts, &mut client, &mut out).await;
    let outcome = RequestOutcome {
        target: out.target,
        status: out.status,
        grpc_status: out.grpc_status,
        by_router: out.by_router,
        duration: start.elapsed(),
        error: out.error.map(|e| e.to_string()),
    };
    match out.request {
        Some(request) => request.finish(outcome),
        None => shared.routes.observe_unrouted(outcome),
    }
}

/// The router's own answer on the stream.
struct Answer {
    status: u16,
    message: String,
    route_header: Option<String>,
    error: Error,
}

impl Answer {
    fn new(status: u16, error: Error, route_header: Option<String>) -> Self {
        Self {
            status,
            message: format!("{error}\n"),
            route_header,
            error,
        }
    }
}

/// The client's stream.
struct ClientSide {
    /// Its request body.
    body: RecvStream,
    /// Its response side.
    respond: SendResponse<Bytes>,
    /// What of its request body went upstream (kept while small, to send
    /// it again when the upstream refuses the stream).
    sent: Sent,
}

/// Route the stream and forward it (again on another connection when the
/// upstream refuses it), or answer it ourselves.
async fn handle(shared: &Shared, parts: &Parts, client: &mut ClientSide, out: &mut Outcome) {
    let fields: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let view = RequestView {
        protocol: "h2",
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority: parts.uri.authority().map(|a| a.as_str()),
        headers: &fields,
    };
    let grpc = view.is_grpc();
    if parts.method == Method::CONNECT {
        return answer(
            &mut client.respond,
            grpc,
            Answer::new(405, Error::ConnectMethod, None),
            out,
        );
    }
    let mut exclude = Vec::new();
    let (mut target, mut slot) = match route(shared, &view, &mut exclude, out).await {
        Ok(routed) => routed,
        Err(a) => return answer(&mut client.respond, grpc, a, out),
    };
    let mut retries = 0;
    loop {
        let upstream_request = match upstream_request(parts, &target) {
            Ok(r) => r,
            Err(e) => {
                let a = Answer::new(400, Error::BadRequest(e), target.route_header.clone());
                return answer(&mut client.respond, grpc, a, out);
            }
        };
        let exchange = Exchange {
            shared,
            target: &target,
            grpc,
            deadline: grpc::timeout(&parts.headers),
        };
        let refusal = match exchange.run(slot, upstream_request, client, out).await {
            Ran::Done => return,
            Ran::Refused(e) if retries < MAX_REFUSED_RETRIES => e,
            Ran::Refused(e) => {
                let a = Answer::new(502, Error::Upstream(e), target.route_header.clone());
                return answer(&mut client.respond, grpc, a, out);
            }
        };
        tracing::debug!(error = %refusal, endpoint = %target.endpoint, "upstream refused the stream, sending it again");
        retries += 1;
        // The same endpoint on another connection; if none can be opened,
        // another endpoint.
        slot = match shared.pool.h2.open(&shared.pool, target.endpoint).await {
            Ok(slot) => slot,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connect failed");
                exclude.push(target.endpoint);
                match route(shared, &view, &mut exclude, out).await {
                    Ok((t, s)) => {
                        target = t;
                        s
                    }
                    Err(a) => return answer(&mut client.respond, grpc, a, out),
                }
            }
        };
    }
}

/// Ask the router (again after each failed connect) and open a stream to
/// the endpoint it picked.
async fn route(
    shared: &Shared,
    view: &RequestView<'_>,
    exclude: &mut Vec<SocketAddr>,
    out: &mut Outcome,
) -> Result<(Target, Slot), Answer> {
    let mut last_failure: Option<upstream::Error> = None;
    loop {
        let Routed { route, request } = shared.routes.route_http(view, exclude);
        out.request = Some(request);
        match route {
            Route::Forward(target)
                if !exclude.contains(&target.endpoint) && exclude.len() < MAX_CONNECT_ATTEMPTS =>
            {
                match shared.pool.h2.open(&shared.pool, target.endpoint).await {
                    Ok(slot) => {
                        out.target = Some(target.clone());
                        return Ok((target, slot));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream HTTP/2 connect failed");
                        exclude.push(target.endpoint);
                        last_failure = Some(e);
                        out.target = Some(target);
                    }
                }
            }
            Route::Reject {
                status,
                body,
                route_header,
            } if last_failure.is_none() => {
                return Err(Answer {
                    status: reject_status(status),
                    message: body,
                    route_header,
                    error: Error::Rejected,
                });
            }
            other => {
                let route_header = match other {
                    Route::Forward(t) => t.route_header,
                    Route::Reject { route_header, .. } => route_header,
                };
                let tried = join_endpoints(exclude);
                let error = match last_failure {
                    Some(last) => Error::NoEndpoint { tried, last },
                    None => Error::Rejected,
                };
                return Err(Answer::new(502, error, route_header));
            }
        }
    }
}

/// Send the router's own answer (trailers-only for gRPC).
fn answer(respond: &mut SendResponse<Bytes>, grpc: bool, a: Answer, out: &mut Outcome) {
    let (head, body, grpc_status) =
        grpc::error_response(grpc, a.status, &a.message, a.route_header.as_deref());
    out.status = head.status().as_u16();
    out.grpc_status = grpc_status;
    out.by_router = true;
    out.error = Some(a.error);
    match respond.send_response(head, body.is_none()) {
        Ok(mut stream) => {
            if let Some(body) = body
                && let Err(e) = stream.send_data(body, true)
            {
                tracing::debug!(error = %e, "sending error body failed");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "sending error response failed");
            out.status = STATUS_CLIENT_GONE;
        }
    }
}

/// The request for upstream: the client's, with the fields the router
/// writes itself replaced ([`Target::upstream_fields`]).
fn upstream_request(parts: &Parts, target: &Target) -> Result<Request<()>, http::Error> {
    let uri = match (parts.uri.scheme(), parts.uri.authority()) {
        (Some(_), Some(_)) => parts.uri.clone(),
        _ => Uri::builder()
            .scheme("http")
            .authority(target.endpoint.to_string())
            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()?,
    };
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(())?;
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if !target.replaces(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in target.upstream_fields() {
        headers.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    Ok(request)
}

/// A stream slot on an upstream connection: its handle and its lease.
type Slot = (h2::client::SendRequest<Bytes>, Lease);

/// Result of one attempt on one upstream stream.
enum Ran {
    /// The upstream's response (or an error) went to the client.
    Done,
    /// The upstream refused the stream before processing it and what of the
    /// request body went to it is kept: it can go on another connection.
    Refused(h2::Error),
}

/// How an exchange ended before its response completed.
enum Cut {
    /// The client reset the stream (or went away).
    Client(relay::Error),
    /// The upstream failed the stream before a response head.
    Upstream(h2::Error),
    /// No response head in time.
    Timeout(Duration),
    /// The upstream failed mid-response.
    ResponseBody(relay::Error),
}

/// The streams of one exchange.
struct Streams<'a> {
    /// The client's request body.
    body: &'a mut RecvStream,
    /// The upstream request's body.
    up_send: &'a mut SendStream<Bytes>,
    /// The client stream's response side.
    respond: &'a mut SendResponse<Bytes>,
    /// The client's response body, once the head was sent.
    client_send: &'a mut Option<SendStream<Bytes>>,
    /// What of the request body went upstream.
    sent: &'a mut Sent,
}

/// One request on one upstream stream.
struct Exchange<'a> {
    shared: &'a Shared,
    target: &'a Target,
    grpc: bool,
    /// The call's `grpc-timeout`.
    deadline: Option<Duration>,
}

impl Exchange<'_> {
    async fn run(
        &self,
        (mut send, lease): Slot,
        request: Request<()>,
        client: &mut ClientSide,
        out: &mut Outcome,
    ) -> Ran {
        let ClientSide {
            body,
            respond,
            sent,
        } = client;
        // No body at all: the headers end the stream.
        let headers_only = body.is_end_stream() && sent.bytes == 0 && !sent.ended;
        let (response, mut up_send) = match send.send_request(request, headers_only) {
            Ok(r) => r,
            Err(e) => {
                lease.retire();
                return Ran::Refused(e);
            }
        };
        let mut client_send: Option<SendStream<Bytes>> = None;
        let streams = Streams {
            body,
            up_send: &mut up_send,
            respond,
            client_send: &mut client_send,
            sent,
        };
        let ended = self.relay(response, streams, out).await;
        let cut = match ended {
            Ok(()) => return Ran::Done,
            Err(cut) => cut,
        };
        match cut {
            Cut::Upstream(e) if refused(&e) && sent.replayable() && client_send.is_none() => {
                lease.retire();
                Ran::Refused(e)
            }
            Cut::Upstream(e) => {
                // The upstream reset the stream: the client's gets the same
                // reason; any other failure is a 502 (gRPC UNAVAILABLE).
                match e.reason().filter(|_| e.is_reset() && e.is_remote()) {
                    Some(reason) => {
                        respond.send_reset(reason);
                        out.status = 502;
                        out.by_router = true;
                        out.error = Some(Error::Upstream(e));
                    }
                    None => {
                        let a =
                            Answer::new(502, Error::Upstream(e), self.target.route_header.clone());
                        answer(respond, self.grpc, a, out);
                    }
                }
                Ran::Done
            }
            Cut::Timeout(after) => {
                up_send.send_reset(h2::Reason::CANCEL);
                let a = Answer::new(
                    504,
                    Error::ResponseTimeout(after),
                    self.target.route_header.clone(),
                );
                answer(respond, self.grpc, a, out);
                Ran::Done
            }
            Cut::Client(e) => {
                up_send.send_reset(e.reason());
                if client_send.is_none() {
                    out.status = STATUS_CLIENT_GONE;
                }
                out.error = Some(Error::Client(e));
                Ran::Done
            }
            Cut::ResponseBody(e) => {
                if let Some(client) = client_send.as_mut() {
                    client.send_reset(e.reason());
                }
                out.error = Some(Error::ResponseBody(e));
                Ran::Done
            }
        }
    }

    /// Relay the request body while waiting for the response head, then
    /// both bodies at once.
    async fn relay(
        &self,
        response: h2::client::ResponseFuture,
        streams: Streams<'_>,
        out: &mut Outcome,
    ) -> Result<(), Cut> {
        let Streams {
            body,
            up_send,
            respond,
            client_send,
            sent,
        } = streams;
        let cfg = &self.shared.cfg;
        let mut request_done = body.is_end_stream();
        let mut deadline = Deadline::new(self.deadline, cfg.response_timeout);
        let mut timer = pin!(tokio::time::sleep_until(deadline.at));
        if request_done {
            timer.as_mut().reset(deadline.request_sent());
        }
        if sent.bytes > 0 || sent.ended {
            // Sent again after a refusal: what the refused stream got first.
            let replayed = tokio::time::timeout(cfg.response_timeout, sent.replay(up_send)).await;
            match replayed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "sending request to upstream failed"),
                Err(_) => return Err(Cut::Timeout(cfg.response_timeout)),
            }
        }
        let mut pump = pin!(relay::forward(body, up_send, sent));
        let mut response = pin!(response);
        let head = loop {
            tokio::select! {
                biased;
                r = &mut pump, if !request_done => {
                    request_done = true;
                    match r {
                        Err(e @ relay::Error::Recv(_)) => return Err(Cut::Client(e)),
                        Err(e) => tracing::debug!(error = %e, "sending request to upstream failed"),
                        Ok(_) => {}
                    }
                    timer.as_mut().reset(deadline.request_sent());
                }
                r = &mut response => match r {
                    Ok(head) => break head,
                    Err(e) => return Err(Cut::Upstream(e)),
                },
                reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                    let reason = reset.unwrap_or_else(|e| e.reason().unwrap_or(h2::Reason::CANCEL));
                    return Err(Cut::Client(relay::Error::Reset(reason)));
                }
                () = &mut timer, if deadline.armed => {
                    return Err(Cut::Timeout(deadline.limit));
                }
            }
        };
        let (head, mut up_recv) = self.client_head(head);
        out.status = head.status().as_u16();
        out.grpc_status = grpc::status(head.headers());
        let response_ends = up_recv.is_end_stream();
        let client = match respond.send_response(head, response_ends) {
            Ok(s) => client_send.insert(s),
            Err(e) => return Err(Cut::Client(relay::Error::Send(e))),
        };
        if response_ends {
            return Ok(());
        }
        let mut down = Sent::default();
        {
            let mut response_pump = pin!(relay::forward(&mut up_recv, client, &mut down));
            loop {
                tokio::select! {
                    biased;
                    r = &mut pump, if !request_done => {
                        request_done = true;
                        if let Err(e @ relay::Error::Recv(_)) = r {
                            return Err(Cut::Client(e));
                        }
                    }
                    r = &mut response_pump => match r {
                        Ok(()) => break,
                        Err(e @ relay::Error::Recv(_)) => return Err(Cut::ResponseBody(e)),
                        Err(e) => return Err(Cut::Client(e)),
                    },
                }
            }
        }
        if down.grpc_status.is_some() {
            out.grpc_status = down.grpc_status;
        }
        Ok(())
    }

    /// The upstream's response head for the client, with `x-laneway-route`
    /// when asked for.
    fn client_head(&self, head: Response<RecvStream>) -> (Response<()>, RecvStream) {
        let (parts, body) = head.into_parts();
        let mut head = Response::from_parts(parts, ());
        if let Some(route) = self
            .target
            .route_header
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            head.headers_mut()
                .insert(crate::router::ROUTE_HEADER, route);
        }
        (head, body)
    }
}

/// When the wait for the response head ends: at the call's deadline
/// (`grpc-timeout`), and at the response timeout after the request was
/// fully sent (or could no longer be), whichever comes first.
struct Deadline {
    /// The call's deadline, if it has one.
    call: Option<Instant>,
    configured: Duration,
    /// When the timer fires (meaningful once armed).
    at: Instant,
    /// Whether the timer runs.
    armed: bool,
    /// The time limit that `at` stands for, for the error.
    limit: Duration,
}

impl Deadline {
    fn new(call: Option<Duration>, configured: Duration) -> Self {
        let at = call.map(deadline_after);
        Self {
            call: at,
            configured,
            at: at.unwrap_or_else(|| deadline_after(configured)),
            armed: at.is_some(),
            limit: call.unwrap_or(configured),
        }
    }

    /// The request is fully sent: the response timeout runs from now.
    fn request_sent(&mut self) -> Instant {
        let by_timeout = deadline_after(self.configured);
        if self.call.is_none_or(|call| by_timeout < call) {
            self.at = by_timeout;
            self.limit = self.configured;
        }
        self.armed = true;
        self.at
    }
}

/// Whether the upstream refused the stream without processing it: it can
/// safely go to another connection.
fn refused(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

//! The `lanes.Echo` server: hyper's HTTP/2 server with tonic's method
//! glue, answering as its pod. It counts the calls it began and those that
//! ended before it finished them (the client cancelled, or its deadline
//! was enforced by the router), as a server's handler sees its context
//! cancelled.
//!
//! It is served with hyper directly rather than tonic's transport server,
//! which would enforce `grpc-timeout` itself: a server that ignores its
//! deadline leaves enforcing it to the path in between.

use std::{
    convert::Infallible,
    hash::Hasher,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Result;
use futures::{Stream, future::BoxFuture, stream};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use tonic::{
    Request, Response, Status, Streaming, codegen::http, metadata::MetadataMap, server::Grpc,
};
use tonic_prost::ProstCodec;

use super::{
    BIDI, CLIENT_STREAM, EchoReply, EchoRequest, MAX_MESSAGE, SERVER_STREAM, TAG_HEADER, UNARY,
    pattern,
};
use crate::node::Pod;

/// A running `lanes.Echo` server; stops on drop, as a killed process does
/// (its listener and every connection close).
#[derive(Debug)]
pub struct EchoServer {
    runtime: Option<tokio::runtime::Runtime>,
    counts: Arc<Counts>,
}

/// What a server counts.
#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    cancelled: AtomicU64,
}

impl EchoServer {
    /// Serves `lanes.Echo` as `pod`'s name on `port` (IPv4 and IPv6).
    pub fn start(pod: &Pod, port: u16) -> Result<Self> {
        let listener = crate::backend::listen(pod, port)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let counts = Arc::new(Counts::default());
        runtime.spawn(accept(listener, pod.name.as_str().into(), counts.clone()));
        Ok(Self {
            runtime: Some(runtime),
            counts,
        })
    }

    /// Calls begun so far.
    pub fn calls(&self) -> u64 {
        self.counts.calls.load(Ordering::Relaxed)
    }

    /// Calls that ended before the server had finished them.
    pub fn cancelled(&self) -> u64 {
        self.counts.cancelled.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, name: Arc<str>, counts: Arc<Counts>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        // As tonic's own server does: small frames go out at once.
        let _ = stream.set_nodelay(true);
        let echo = Echo {
            name: name.clone(),
            peer: peer.ip().to_canonical().to_string().into(),
            counts: counts.clone(),
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(echo))
                .await;
        });
    }
}

/// The service on one connection.
#[derive(Clone, Debug)]
struct Echo {
    name: Arc<str>,
    /// The connection's source address.
    peer: Arc<str>,
    counts: Arc<Counts>,
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tower::Service<http::Request<Incoming>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let echo = &echo;
            Ok(match request.uri().path() {
                UNARY => {
                    let unary = tower::service_fn(|r| echo.clone().unary(r));
                    grpc.unary(unary, request).await
                }
                SERVER_STREAM => {
                    let server_stream = tower::service_fn(|r| echo.clone().server_stream(r));
                    grpc.server_streaming(server_stream, request).await
                }
                CLIENT_STREAM => {
                    let client_stream = tower::service_fn(|r| echo.clone().client_stream(r));
                    grpc.client_streaming(client_stream, request).await
                }
                BIDI => {
                    let bidi = tower::service_fn(|r| echo.clone().bidi(r));
                    grpc.streaming(bidi, request).await
                }
                other => Status::unimplemented(other.to_owned()).into_http(),
            })
        })
    }
}

impl Echo {
    /// One reply, after `sleep_ms`.
    async fn unary(self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let call = self.begin(request.metadata());
        let message = request.into_inner();
        sleep(message.sleep_ms).await;
        let mut received = Received::default();
        received.add(&message.payload);
        let reply = call.reply(0, message.reply_bytes, &received);
        call.finish();
        Ok(Response::new(reply))
    }

    /// `replies` replies, each after `sleep_ms`, made as the client reads
    /// them (a slow reader slows the server down, as HTTP/2 flow control
    /// does).
    async fn server_stream(
        self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Replies>, Status> {
        let call = self.begin(request.metadata());
        let message = request.into_inner();
        let mut received = Received::default();
        received.add(&message.payload);
        let (replies, sleep_ms, reply_bytes) =
            (message.replies, message.sleep_ms, message.reply_bytes);
        let replies = stream::unfold((call, 0), move |(call, sequence)| {
            let received = received.clone();
            async move {
                if sequence == replies {
                    call.finish();
                    return None;
                }
                sleep(sleep_ms).await;
                let reply = call.reply(sequence, reply_bytes, &received);
                Some((Ok(reply), (call, sequence + 1)))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    /// Reads every request, sleeping each one's `sleep_ms` before reading
    /// the next (a slow reader), then answers once with what it got.
    async fn client_stream(
        self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let call = self.begin(request.metadata());
        let mut inbound = request.into_inner();
        let (mut received, mut count, mut reply_bytes) = (Received::default(), 0, 0);
        while let Some(message) = inbound.message().await? {
            received.add(&message.payload);
            count += 1;
            reply_bytes = message.reply_bytes;
            sleep(message.sleep_ms).await;
        }
        let reply = call.reply(count, reply_bytes, &received);
        call.finish();
        Ok(Response::new(reply))
    }

    /// One reply per request, each after that request's `sleep_ms`.
    async fn bidi(
        self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let call = self.begin(request.metadata());
        let inbound = request.into_inner();
        let state = (call, inbound, Received::default(), 0);
        let replies = stream::unfold(
            state,
            |(call, mut inbound, mut received, sequence)| async move {
                // An error (the client reset the stream) ends it unfinished.
                let message = inbound.message().await.ok()?;
                let Some(message) = message else {
                    call.finish();
                    return None;
                };
                received.add(&message.payload);
                sleep(message.sleep_ms).await;
                let reply = call.reply(sequence, message.reply_bytes, &received);
                Some((Ok(reply), (call, inbound, received, sequence + 1)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    fn begin(&self, metadata: &MetadataMap) -> Call {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        let seen_tag = metadata
            .get(TAG_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Call {
            echo: self.clone(),
            seen_tag,
            finished: false,
        }
    }
}

/// A call in progress: counted as cancelled if dropped unfinished (hyper
/// drops a stream's handler when the client resets it).
struct Call {
    echo: Echo,
    seen_tag: String,
    finished: bool,
}

impl Call {
    fn reply(&self, sequence: u32, reply_bytes: u32, received: &Received) -> EchoReply {
        EchoReply {
            endpoint: self.echo.name.to_string(),
            seen_tag: self.seen_tag.clone(),
            peer: self.echo.peer.to_string(),
            payload: pattern(reply_bytes as usize),
            received_bytes: received.bytes,
            received_digest: received.digest.finish(),
            sequence,
            // The client's to set.
            via_router: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.echo.counts.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The payload bytes a call received so far, and their digest
/// ([`super::digest`] of them all).
#[derive(Clone, Default)]
struct Received {
    bytes: u64,
    digest: std::hash::DefaultHasher,
}

impl Received {
    fn add(&mut self, payload: &[u8]) {
        self.bytes += payload.len() as u64;
        self.digest.write(payload);
    }
}

async fn sleep(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

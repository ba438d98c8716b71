//! The `lanes.Echo` client: tonic's method glue over hyper's HTTP/2 client,
//! on one connection made from inside a pod (by this process, in the test
//! cgroup, so the agent's programs redirect it as that pod's).
//!
//! hyper's client rather than tonic's `Channel`, which keeps a call's
//! deadline itself (ending it `CANCELLED`): here a call's deadline
//! (`grpc-timeout`) is kept by the path, as the router must keep it for
//! clients that only pass it on.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use anyhow::Result;
use futures::{Stream, future::BoxFuture};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    client::Grpc,
    codegen::http::{Uri, uri::PathAndQuery},
    metadata::MetadataValue,
};
use tonic_prost::ProstCodec;

use super::{
    BIDI, CLIENT_STREAM, EchoReply, EchoRequest, MAX_MESSAGE, SERVER_STREAM, TAG_HEADER, UNARY,
};
use crate::node::Pod;

/// The header laneway's router answers with when a request asks for it.
const ROUTE_HEADER: &str = laneway::router::ROUTE_HEADER;

/// A runtime for a test's clients (the servers have their own).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `message` as a request with `x-mse-tag: tag` metadata when a tag is given,
/// asking laneway's router to say it routed the call (`x-laneway-route`, read
/// into [`EchoReply::via_router`]).
pub fn tagged<T>(message: T, tag: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(ROUTE_HEADER, MetadataValue::from_static("1"));
    if let Some(tag) = tag {
        let value: MetadataValue<_> = tag.parse().expect("a tag is a valid metadata value");
        request.metadata_mut().insert(TAG_HEADER, value);
    }
    request
}

/// A `lanes.Echo` client. Its clones share its one connection; when that
/// connection ends (e.g. after a GOAWAY), the next call makes a new one from
/// the same pod.
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: Grpc<Client<FromPod, Body>>,
    connections: Arc<AtomicU64>,
}

impl EchoClient {
    /// A client from `pod` to `to` (gRPC over cleartext HTTP/2); it connects
    /// at its first call.
    pub fn new(pod: &Pod, to: SocketAddr) -> Result<Self> {
        let connections = Arc::new(AtomicU64::new(0));
        let connector = FromPod {
            netns: Arc::new(pod.netns.file()?),
            to,
            connections: connections.clone(),
        };
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        let grpc = Grpc::with_origin(http2, format!("http://{to}").parse()?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { grpc, connections })
    }

    /// The connections it has made so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// `Unary`: one request, one reply.
    pub async fn unary(
        &mut self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let answer = self.grpc.unary(request, path(UNARY), codec()).await;
        answer.map(mark_routed)
    }

    /// `ServerStream`: one request, `replies` replies.
    pub async fn server_stream(
        &mut self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(request, path(SERVER_STREAM), codec())
            .await
    }

    /// `ClientStream`: a stream of requests, one reply.
    pub async fn client_stream(
        &mut self,
        request: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let answer = self
            .grpc
            .client_streaming(request, path(CLIENT_STREAM), codec())
            .await;
        answer.map(mark_routed)
    }

    /// `Bidi`: a reply per request, as they come.
    pub async fn bidi(
        &mut self,
        request: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc.streaming(request, path(BIDI), codec()).await
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))
    }
}

/// Connects from inside a pod to one address, counting its connections.
#[derive(Clone, Debug)]
struct FromPod {
    netns: Arc<std::fs::File>,
    to: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl tower::Service<Uri> for FromPod {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = anyhow::Error;
    type Future = BoxFuture<'static, Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let (netns, to) = (self.netns.clone(), self.to);
        Box::pin(async move {
            let stream = tokio::task::spawn_blocking(move || crate::client::connect_in(&netns, to))
                .await??;
            // As tonic's own connector does: small frames go out at once.
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
        })
    }
}

/// Every reply of a streamed answer, until its end (or its error), each
/// marked with whether the router answered.
pub async fn replies(answer: Response<Streaming<EchoReply>>) -> Result<Vec<EchoReply>, Status> {
    let routed = by_router(&answer);
    rest_of(answer.into_inner(), routed).await
}

/// The replies left in `stream`, until its end (or its error), marked
/// `routed` (read with [`by_router`] from the answer's headers).
pub async fn rest_of(
    mut stream: Streaming<EchoReply>,
    routed: bool,
) -> Result<Vec<EchoReply>, Status> {
    let mut all = Vec::new();
    while let Some(mut reply) = stream.message().await? {
        reply.via_router = routed;
        all.push(reply);
    }
    Ok(all)
}

/// Whether laneway's router answered (it writes `x-laneway-route` when asked).
pub fn by_router<T>(answer: &Response<T>) -> bool {
    answer.metadata().contains_key(ROUTE_HEADER)
}

/// `answer` with [`EchoReply::via_router`] set from its headers.
fn mark_routed(mut answer: Response<EchoReply>) -> Response<EchoReply> {
    answer.get_mut().via_router = by_router(&answer);
    answer
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

fn codec() -> ProstCodec<EchoRequest, EchoReply> {
    ProstCodec::default()
}

/// Runs `during` while two workers in `pod`, each with its own client (one
/// connection, a new one when the server ends it), make unary calls to `to`
/// (the VIP of [`super::reviews_twin`]) without pause, every other one
/// tagged `joint1`. A call the router
/// answered from outside its lane counts as failed; a call that failed
/// before reaching any server is retried, as gRPC clients do
/// ([`never_processed`]). The workers stop however `during` ends; its error
/// is returned after they have.
pub fn under_load(
    pod: &Pod,
    to: SocketAddr,
    during: impl FnOnce() -> Result<()>,
) -> Result<crate::client::LoadCounts> {
    let runtime = runtime()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new(std::sync::Mutex::new(crate::client::LoadCounts::default()));
    let workers = (0..2)
        .map(|_| {
            let client = EchoClient::new(pod, to)?;
            Ok(runtime.spawn(load(client, stop.clone(), counts.clone())))
        })
        .collect::<Result<Vec<_>>>()?;
    let outcome = {
        let _stop_on_exit = crate::StopOnDrop(&stop);
        during()
    };
    for worker in workers {
        runtime.block_on(worker)?;
    }
    outcome?;
    let counts = std::mem::take(&mut *counts.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(counts)
}

async fn load(
    mut client: EchoClient,
    stop: Arc<std::sync::atomic::AtomicBool>,
    counts: Arc<std::sync::Mutex<crate::client::LoadCounts>>,
) {
    for call in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (tag, lane) = match call % 2 {
            0 => (Some("joint1"), "reviews-joint1"),
            _ => (None, "reviews-base"),
        };
        let mut answer = client.unary(tagged(EchoRequest::default(), tag)).await;
        for _ in 0..5 {
            match &answer {
                Err(status) if never_processed(status) => {
                    answer = client.unary(tagged(EchoRequest::default(), tag)).await;
                }
                _ => break,
            }
        }
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            // Through the router, a call lands in its lane; the direct way
            // (no router live), the kernel's pick for the caller's.
            Ok(reply) if reply.get_ref().routed() && reply.get_ref().endpoint != lane => {
                counts.failed += 1;
                counts.note(format!("{tag:?} answered by {}", reply.get_ref().endpoint));
            }
            Ok(reply) => {
                let reply = reply.into_inner();
                counts.ok += 1;
                counts.direct += u64::from(!reply.routed());
                *counts.by_endpoint.entry(reply.endpoint).or_default() += 1;
            }
            Err(status) => {
                counts.failed += 1;
                counts.note(format!("{tag:?}: {status}"));
            }
        }
    }
}

/// Whether a call failed before a server could have taken it, so that gRPC
/// clients retry it transparently (tonic leaves that to its user): its
/// connection closed before it was sent (or before it was handed to the
/// connection at all), its stream was refused, or it came after the
/// connection's GOAWAY. That GOAWAY error also ends a stream the
/// server had taken when the connection closes under it: counting the
/// servers' calls against the calls answered tells the two apart.
pub fn never_processed(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_canceled() || hyper.is_closed())
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = error.source();
    }
    false
}

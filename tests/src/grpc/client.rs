//! The `lanes.Echo` client: tonic's channel over one HTTP/2 connection made
//! from inside a pod (by this process, in the test cgroup, so the agent's
//! programs redirect it as that pod's).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Result;
use futures::Stream;
use hyper_util::rt::TokioIo;
use tonic::{
    Request, Response, Status, Streaming,
    client::Grpc,
    codegen::http::{Uri, uri::PathAndQuery},
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_prost::ProstCodec;

use super::{
    BIDI, CLIENT_STREAM, EchoReply, EchoRequest, MAX_MESSAGE, SERVER_STREAM, TAG_HEADER, UNARY,
};
use crate::node::Pod;

/// A runtime for a test's clients (the servers have their own).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `message` as a request with `x-mse-tag: tag` metadata when a tag is given.
pub fn tagged<T>(message: T, tag: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
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
    grpc: Grpc<Channel>,
    connections: Arc<AtomicU64>,
}

impl EchoClient {
    /// Connects from `pod` to `to` (gRPC over cleartext HTTP/2).
    pub async fn connect(pod: &Pod, to: SocketAddr) -> Result<Self> {
        let netns = Arc::new(pod.netns.file()?);
        let connections = Arc::new(AtomicU64::new(0));
        let connected = connections.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let netns = netns.clone();
            connected.fetch_add(1, Ordering::Relaxed);
            async move {
                let stream =
                    tokio::task::spawn_blocking(move || crate::client::connect_in(&netns, to))
                        .await??;
                // As tonic's own connector does: small frames go out at once.
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                anyhow::Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
            }
        });
        let channel = Endpoint::from_shared(format!("http://{to}"))?
            .connect_with_connector(connector)
            .await?;
        let grpc = Grpc::new(channel)
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
        self.grpc.unary(request, path(UNARY), codec()).await
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
        self.grpc
            .client_streaming(request, path(CLIENT_STREAM), codec())
            .await
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

/// Every reply of a stream, until its end (or its error).
pub async fn replies(mut stream: Streaming<EchoReply>) -> Result<Vec<EchoReply>, Status> {
    let mut all = Vec::new();
    while let Some(reply) = stream.message().await? {
        all.push(reply);
    }
    Ok(all)
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

fn codec() -> ProstCodec<EchoRequest, EchoReply> {
    ProstCodec::default()
}

/// Runs `during` while two workers in `pod`, each with its own client (one
/// connection, a new one when the server ends it), make unary calls to `to`
/// without pause, every other one tagged `joint1`. A call the router
/// answered from outside its lane counts as failed. The workers stop however `during` ends; its error is returned
/// after they have.
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
            let client = runtime.block_on(EchoClient::connect(pod, to))?;
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
        let answer = client.unary(tagged(EchoRequest::default(), tag)).await;
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

//! A real gRPC service, `lanes.Echo`, served and called with tonic over
//! HTTP/2 cleartext (prior knowledge, as gRPC clients dial a plain port):
//! an [`EchoServer`] listening inside a pod's netns, and an [`EchoClient`]
//! whose connections are made inside a pod's netns, so the agent's
//! programs see them as that pod's.
//!
//! No protoc here: the messages are prost structs written by hand, and the
//! method glue is tonic's own `server::Grpc` / `client::Grpc` with the
//! prost codec, which is all generated code does. Every reply carries the
//! answering endpoint's name, the `x-mse-tag` metadata it received and the
//! peer address it saw (as the HTTP backend's `x-endpoint`, `x-seen-tag`
//! and `x-peer` do). The request says how the server behaves: how big its
//! replies are, how many it streams, how long it sleeps first.

mod client;
mod server;

use std::{hash::Hasher, net::SocketAddr};

use anyhow::{Context, Result};
pub use client::{EchoClient, by_router, replies, rest_of, runtime, tagged, under_load};
pub use server::EchoServer;

use crate::{
    node::{Node, ServiceSpec},
    standard::{Mode, Standard},
};

/// The port `lanes.Echo` listens on, and its Service's port.
pub const PORT: u16 = 9090;
/// The name of [`reviews_twin`]'s Service.
pub const TWIN: &str = "reviews-grpc";

/// The methods' paths: one reply to one request, a stream of replies to
/// one request, one reply to a stream of requests, a reply per request.
const UNARY: &str = "/lanes.Echo/Unary";
const SERVER_STREAM: &str = "/lanes.Echo/ServerStream";
const CLIENT_STREAM: &str = "/lanes.Echo/ClientStream";
const BIDI: &str = "/lanes.Echo/Bidi";
/// The largest message either side sends or accepts: 16 MiB payloads fit,
/// four times tonic's default limit.
pub const MAX_MESSAGE: usize = 32 << 20;
/// The metadata (header) that carries a request's tag.
pub const TAG_HEADER: &str = "x-mse-tag";

/// A call: what to send, and how the server should answer it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Bytes for the server to count and digest.
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// How many bytes each reply carries ([`pattern`]).
    #[prost(uint32, tag = "2")]
    pub reply_bytes: u32,
    /// `ServerStream`: how many replies to stream.
    #[prost(uint32, tag = "3")]
    pub replies: u32,
    /// How long the server sleeps before each reply (`ClientStream`: after
    /// reading this request, a slow reader), ignoring any deadline, as a
    /// handler that never looks at its context does.
    #[prost(uint32, tag = "4")]
    pub sleep_ms: u32,
}

/// An answer, naming who answered and what it saw.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The answering endpoint's (pod's) name.
    #[prost(string, tag = "1")]
    pub endpoint: String,
    /// The `x-mse-tag` metadata the server received, `-` when none.
    #[prost(string, tag = "2")]
    pub seen_tag: String,
    /// The source address of the connection the call came on.
    #[prost(string, tag = "3")]
    pub peer: String,
    /// [`pattern`] of the requested size.
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    /// Payload bytes received on this call so far.
    #[prost(uint64, tag = "5")]
    pub received_bytes: u64,
    /// [`digest`] of the payload(s) received on this call so far.
    #[prost(uint64, tag = "6")]
    pub received_digest: u64,
    /// This reply's number in its stream (from 0); for `ClientStream`, how
    /// many requests came.
    #[prost(uint32, tag = "7")]
    pub sequence: u32,
    /// Never sent by a server: [`EchoClient`] sets it when the answer
    /// carried `x-laneway-route`, which only laneway's router writes (the
    /// client asks for it on every call).
    #[prost(bool, tag = "8")]
    pub via_router: bool,
}

impl EchoReply {
    /// Whether the call went through laneway's router. The source address
    /// cannot tell: routed calls reach endpoints from the calling pod's
    /// address, as direct ones do.
    pub fn routed(&self) -> bool {
        self.via_router
    }
}

/// `len` bytes of a fixed pattern, so either side can check what it got.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A digest of `bytes` that both sides compute the same way; the same for
/// the bytes of several messages as for them all in one.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// Service [`TWIN`] (10.96.0.13 and fd00:96::13, port [`PORT`]): a gRPC twin
/// of `reviews` on the same pods and lanes (base, joint1, gray: its servers
/// answer with the same names), its port declared `protocol`.
pub fn reviews_twin(reviews: &ServiceSpec, protocol: &'static str) -> Result<ServiceSpec> {
    Ok(ServiceSpec {
        name: TWIN.into(),
        vip: "10.96.0.13".parse()?,
        vip6: Some("fd00:96::13".parse()?),
        port: PORT,
        target_port: PORT,
        protocol,
        policy: None,
        endpoints: reviews.endpoints.clone(),
    })
}

/// An [`EchoServer`] on [`PORT`] of each of `service`'s endpoints.
pub fn serve(node: &Node, service: &ServiceSpec) -> Result<Vec<EchoServer>> {
    service
        .endpoints
        .iter()
        .map(|(pod, _)| EchoServer::start(node.pod(*pod), PORT))
        .collect()
}

/// The standard node with [`reviews_twin`] and its servers. Dropped in field
/// order: the servers, then the node.
#[derive(Debug)]
pub struct GrpcStandard {
    /// The twin's servers, one per endpoint.
    pub servers: Vec<EchoServer>,
    /// The standard node.
    pub standard: Standard,
}

impl GrpcStandard {
    /// Starts the standard node in `mode` with the twin (declared `auto`,
    /// then adjusted by `adjust`) and its servers.
    pub fn start(mode: Mode, adjust: impl FnOnce(&mut ServiceSpec)) -> Result<Self> {
        let mut twin = None;
        let standard = Standard::start_with(|sc| {
            mode.apply(sc);
            twin = Some(reviews_twin(&sc.services[0], "auto").map(|mut svc| {
                adjust(&mut svc);
                sc.services.push(svc);
            }));
        })?;
        twin.context("the scenario was adjusted")??;
        let servers = serve(&standard.node, twin_of(&standard)?)?;
        Ok(Self { servers, standard })
    }

    /// The twin's VIP (IPv4).
    pub fn vip(&self) -> Result<SocketAddr> {
        Ok(Node::vip(twin_of(&self.standard)?))
    }

    /// The twin's IPv6 VIP.
    pub fn vip6(&self) -> Result<SocketAddr> {
        let twin = twin_of(&self.standard)?;
        let vip6 = twin.vip6.context("the twin has an IPv6 VIP")?;
        Ok(SocketAddr::new(vip6.into(), twin.port))
    }

    /// The server of the endpoint named `pod`.
    pub fn server(&self, pod: &str) -> &EchoServer {
        let twin = twin_of(&self.standard).expect("started with the twin");
        let index = twin
            .endpoints
            .iter()
            .position(|(p, _)| self.standard.node.pod(*p).name == pod)
            .unwrap_or_else(|| panic!("{pod} is no endpoint of {TWIN}"));
        &self.servers[index]
    }

    /// A client in pod `pod` (an index of [`Standard::pods`]) of the
    /// twin's VIP.
    pub fn client(&self, pod: usize) -> Result<EchoClient> {
        EchoClient::new(self.standard.node.pod(pod), self.vip()?)
    }
}

fn twin_of(standard: &Standard) -> Result<&ServiceSpec> {
    standard
        .scenario
        .services
        .iter()
        .find(|s| s.name == TWIN)
        .with_context(|| format!("no service {TWIN}"))
}

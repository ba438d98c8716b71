//! The check that a configuration routes HTTP/2 per stream: on one h2c
//! connection from the client pod, tagged and untagged plain and gRPC
//! streams at once, each answered in full by an endpoint of its lane.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, client::conn::http2, header::CONTENT_TYPE};
use hyper_util::rt::{TokioExecutor, TokioIo};
use laneway_tests::node::Pod;
use tokio::task::JoinSet;

use super::{GRPC_CONTENT_TYPE, GRPC_PATH, SMALL_PATH, grpc_request};
use crate::topology::TAG;

/// Streams of each kind, half of them tagged.
const STREAMS: usize = 12;

/// What one stream asks.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// `GET /small`.
    Small,
    /// The unary gRPC echo.
    Grpc,
}

/// Opens one h2c connection from `pod` to `vip` and sends [`STREAMS`] plain
/// and [`STREAMS`] gRPC streams on it at once, every other one tagged. Each
/// must be answered in full (gRPC: `grpc-status: 0` and the echoed message);
/// with `lanes`, tagged ones by a `gray` endpoint and untagged ones by the
/// base endpoint (the direct path cannot see tags).
pub fn check_routing(pod: &Pod, vip: SocketAddr, lanes: bool) -> Result<()> {
    let stream = laneway_tests::client::connect(pod, vip)?;
    stream.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let io = TokioIo::new(tokio::net::TcpStream::from_std(stream)?);
        let (send, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .context("h2c handshake")?;
        tokio::spawn(connection);
        let mut streams = JoinSet::new();
        for call in [Call::Small, Call::Grpc] {
            for i in 0..STREAMS {
                let tag = (i % 2 == 0).then_some(TAG);
                let send = send.clone();
                streams.spawn(async move {
                    let endpoint = ask(send, vip, call, tag)
                        .await
                        .with_context(|| format!("{call:?} stream with tag {tag:?}"))?;
                    let lane_ok = match tag {
                        Some(_) => endpoint.starts_with("reviews-gray"),
                        None => endpoint == "reviews-base",
                    };
                    if lanes && !lane_ok {
                        bail!("{call:?} stream with tag {tag:?} went to {endpoint}");
                    }
                    Ok(())
                });
            }
        }
        while let Some(done) = streams.join_next().await {
            done??;
        }
        Ok(())
    })
}

/// Sends one stream and checks its answer; returns the endpoint that gave it.
async fn ask(
    mut send: http2::SendRequest<Full<Bytes>>,
    vip: SocketAddr,
    call: Call,
    tag: Option<&str>,
) -> Result<String> {
    let mut request = Request::builder();
    if let Some(tag) = tag {
        request = request.header("x-mse-tag", tag);
    }
    let sent = match call {
        Call::Small => Bytes::new(),
        Call::Grpc => Bytes::from(grpc_request()),
    };
    let request = match call {
        Call::Small => request
            .method(Method::GET)
            .uri(format!("http://{vip}{SMALL_PATH}")),
        Call::Grpc => request
            .method(Method::POST)
            .uri(format!("http://{vip}{GRPC_PATH}"))
            .header(CONTENT_TYPE, GRPC_CONTENT_TYPE)
            .header("te", "trailers"),
    }
    .body(Full::new(sent.clone()))?;
    let response = send.send_request(request).await?;
    let status = response.status();
    let endpoint = response
        .headers()
        .get("x-endpoint")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let collected = response.into_body().collect().await?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = collected.to_bytes();
    if status != 200 {
        bail!("status {status} from {endpoint:?}");
    }
    match call {
        Call::Small if body != format!("{endpoint}\n") => {
            bail!("{endpoint:?} answered {body:?}")
        }
        Call::Grpc if grpc_status.as_deref() != Some("0") || body != sent => {
            bail!("{endpoint:?} answered grpc-status {grpc_status:?} and {body:?}")
        }
        _ => Ok(endpoint),
    }
}

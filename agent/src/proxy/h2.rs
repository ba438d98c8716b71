//! The HTTP/2 engine (h2c, prior knowledge): every stream of a client
//! connection is routed on its own, many at once.
//!
//! The server side (the `h2` crate) accepts streams concurrently, one task
//! each ([`stream`]); each is routed with the same [`Routes`] as an HTTP/1
//! request and sent on a multiplexed upstream connection shared by the
//! streams of all clients ([`upstream`]). Bodies are relayed with
//! end-to-end flow control ([`relay`]), trailers and resets pass both ways,
//! gRPC calls get gRPC statuses ([`grpc`]). While the router drains, the
//! connection sends GOAWAY and lets its open streams finish; an idle one
//! does the same after the idle timeout.

pub(crate) mod grpc;
mod relay;
mod stream;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod upstream;

use std::{pin::pin, sync::Arc};

use bytes::Bytes;
use tokio::{net::TcpStream, task::JoinSet};

use super::{Pool, ProxyConfig, Routes, deadline_after};

/// Streams a client may open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Receive window of each stream (client requests, upstream responses):
/// what the router may hold of one stream's body.
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
/// Receive window of each client connection: a client whose streams go to
/// slow readers stalls its own connection after this much.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// What every stream of a connection shares.
pub(crate) struct Shared {
    routes: Arc<dyn Routes>,
    pool: Arc<Pool>,
    cfg: Arc<ProxyConfig>,
}

/// Serve HTTP/2 on `client` until the connection closes.
pub(crate) async fn serve(
    client: TcpStream,
    routes: Arc<dyn Routes>,
    pool: Arc<Pool>,
    cfg: Arc<ProxyConfig>,
) {
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .handshake::<_, Bytes>(client);
    let mut conn = match tokio::time::timeout(cfg.header_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("HTTP/2 handshake timed out");
            return;
        }
    };
    let shared = Arc::new(Shared {
        routes,
        pool: pool.clone(),
        cfg: cfg.clone(),
    });
    let mut drain = pool.drain_signal();
    let mut closing = false;
    if pool.is_draining() {
        conn.graceful_shutdown();
        closing = true;
    }
    let mut streams = JoinSet::new();
    let mut idle = pin!(tokio::time::sleep_until(deadline_after(cfg.idle_timeout)));
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    streams.spawn(stream::serve(request, respond, shared.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 client connection failed");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle.as_mut().reset(deadline_after(cfg.idle_timeout));
                }
            }
            _ = drain.changed(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing && streams.is_empty() => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    // The connection is gone; streams still relaying finish on their own.
    while streams.join_next().await.is_some() {}
}

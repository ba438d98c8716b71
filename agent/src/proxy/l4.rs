//! Opaque (L4) passthrough and raw bidirectional tunnels.
//!
//! A passthrough connection asks [`Routes::route_l4`] for an endpoint,
//! connects (trying other endpoints when a connect fails) and then copies
//! bytes both ways until both directions ended. Half-close is respected: EOF
//! from one side becomes a `shutdown(Write)` towards the other while the other
//! direction keeps flowing. The same tunnel serves upgraded HTTP connections
//! after a `101 Switching Protocols`. A passthrough stream is reported once,
//! when it ends, with no HTTP status ([`STATUS_L4`]).

use std::{io, net::SocketAddr};

use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

use super::{
    InFlight, MAX_CONNECT_ATTEMPTS, Pool, RequestOutcome, Route, Routed, Routes, STATUS_FORBIDDEN,
    STATUS_L4, Target,
};

/// Buffer size of each tunnel direction.
const TUNNEL_BUF: usize = 32 * 1024;

/// Why a passthrough ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The router rejected the stream.
    #[error("rejected by router with status {0}")]
    Rejected(u16),
    /// No endpoint accepted the connection.
    #[error("no endpoint reachable (tried {0:?})")]
    NoEndpoint(Vec<SocketAddr>),
    /// Copying failed (reset, ...).
    #[error("tunnel: {0}")]
    Io(#[from] io::Error),
}

/// Serve an opaque stream: route, connect, copy both ways; report it to
/// the router when it ends.
pub(crate) async fn passthrough(mut client: TcpStream, routes: &dyn Routes, pool: &Pool) {
    let start = Instant::now();
    let mut target = None;
    let mut request = None;
    let (error, by_router) = match run(&mut client, routes, pool, &mut target, &mut request).await {
        Ok((up, down)) => {
            tracing::debug!(up, down, "l4 stream finished");
            (None, false)
        }
        Err(e) => {
            tracing::debug!(error = %e, "l4 stream ended");
            if matches!(e, Error::Rejected(STATUS_FORBIDDEN)) {
                reset(&client);
            }
            let ours = !matches!(e, Error::Io(_));
            (Some(e.to_string()), ours)
        }
    };
    let outcome = RequestOutcome {
        by_router,
        target,
        status: STATUS_L4,
        grpc_status: None,
        duration: start.elapsed(),
        error,
    };
    match request {
        Some(request) => request.finish(outcome),
        None => routes.observe_unrouted(outcome),
    }
}

/// Makes the close of `client` a reset (`SO_LINGER` 0): a refused caller
/// sees `ECONNRESET`, not an orderly end it might take for an answer.
fn reset(client: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER 0 on a refused stream");
    }
}

/// Route, connect and copy; `last` is left holding the target connected to
/// (or the last one tried), `request` the latest decision.
async fn run(
    client: &mut TcpStream,
    routes: &dyn Routes,
    pool: &Pool,
    last: &mut Option<Target>,
    request: &mut Option<Box<dyn InFlight>>,
) -> Result<(u64, u64), Error> {
    let mut exclude = Vec::new();
    let mut upstream = loop {
        let Routed {
            route,
            request: routed,
        } = routes.route_l4(&exclude);
        *request = Some(routed);
        match route {
            Route::Reject { status, .. } => return Err(Error::Rejected(status)),
            Route::Forward(target) => {
                if exclude.contains(&target.endpoint) || exclude.len() >= MAX_CONNECT_ATTEMPTS {
                    return Err(Error::NoEndpoint(exclude));
                }
                let connected = pool.connect(target.endpoint).await;
                let endpoint = target.endpoint;
                *last = Some(target);
                match connected {
                    Ok(stream) => break stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "l4 connect failed");
                        exclude.push(endpoint);
                    }
                }
            }
        }
    };
    Ok(tunnel(client, &[], &mut upstream, &[]).await?)
}

/// Copy bytes both ways between `client` and `upstream` until both directions
/// ended, first delivering bytes already read from each side
/// (`client_pending` goes to upstream, `upstream_pending` to the client).
/// Returns the bytes copied client→upstream and upstream→client.
pub(crate) async fn tunnel(
    client: &mut TcpStream,
    client_pending: &[u8],
    upstream: &mut TcpStream,
    upstream_pending: &[u8],
) -> io::Result<(u64, u64)> {
    tokio::try_join!(
        async {
            if client_pending.is_empty() {
                Ok(())
            } else {
                upstream.write_all(client_pending).await
            }
        },
        async {
            if upstream_pending.is_empty() {
                Ok(())
            } else {
                client.write_all(upstream_pending).await
            }
        },
    )?;
    let (up, down) =
        tokio::io::copy_bidirectional_with_sizes(client, upstream, TUNNEL_BUF, TUNNEL_BUF).await?;
    Ok((
        up + client_pending.len() as u64,
        down + upstream_pending.len() as u64,
    ))
}

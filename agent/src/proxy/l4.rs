//! Opaque (L4) passthrough and raw bidirectional tunnels.
//!
//! A silent client's connection (no byte within the sniff timeout) is an L4
//! stream whose first word decides: see [`passthrough_silent`].
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
    DRAIN_IDLE_GRACE, InFlight, MAX_CONNECT_ATTEMPTS, Pool, ProxyConfig, RequestOutcome, Route,
    Routed, Routes, STATUS_FORBIDDEN, STATUS_L4, Target, deadline_after,
    sniff::{self, Sniffed},
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
    /// The router drained while nobody spoke on a silent client's stream.
    #[error("closed by the drain before either side spoke")]
    Drained,
    /// Copying failed (reset, ...).
    #[error("tunnel: {0}")]
    Io(#[from] io::Error),
}

/// Serve an opaque stream: route, connect, copy both ways; report it to
/// the router when it ends.
pub(crate) async fn passthrough(client: TcpStream, routes: &dyn Routes, pool: &Pool) {
    serve(client, routes, pool, None).await;
}

/// How the connection of a silent client (no byte within the sniff
/// timeout) went on.
pub(crate) enum Silent {
    /// Served as an L4 stream (or ended before anybody spoke).
    Served,
    /// The client spoke first, and in HTTP ([`Sniffed::Http1`] or
    /// [`Sniffed::Http2`]): it is to be routed per request. The upstream
    /// connection, which carried no byte, is closed and the stream not
    /// reported.
    SpokeHttp(TcpStream, Sniffed),
}

/// Serve the connection of a silent client: a server-first protocol (the
/// server greets first: SMTP, MySQL) or a client that connected ahead of
/// its first request (a warming connection pool). It is routed and
/// connected as an L4 stream at once, so a server-first endpoint can greet;
/// then whoever speaks first decides. The endpoint's first bytes make it a
/// passthrough; the client's are sniffed: HTTP is handed back to be routed
/// per request, anything else is passed through on the connection made.
pub(crate) async fn passthrough_silent(
    client: TcpStream,
    routes: &dyn Routes,
    pool: &Pool,
    cfg: &ProxyConfig,
) -> Silent {
    serve(client, routes, pool, Some(cfg)).await
}

/// How [`run`] ended without an error.
enum Ended {
    /// Copied both ways until both directions ended: bytes client→upstream
    /// and upstream→client.
    Copied(u64, u64),
    /// A silent client spoke first, in HTTP.
    SpokeHttp(Sniffed),
}

/// [`passthrough`], or with `silent` the config of a silent client's
/// connection ([`passthrough_silent`]).
async fn serve(
    mut client: TcpStream,
    routes: &dyn Routes,
    pool: &Pool,
    silent: Option<&ProxyConfig>,
) -> Silent {
    let start = Instant::now();
    let mut target = None;
    let mut request = None;
    let run = run(&mut client, routes, pool, silent, &mut target, &mut request);
    let (error, by_router) = match run.await {
        Ok(Ended::Copied(up, down)) => {
            tracing::debug!(up, down, "l4 stream finished");
            (None, false)
        }
        Ok(Ended::SpokeHttp(sniffed)) => {
            tracing::debug!(?sniffed, "a silent client spoke first, in HTTP");
            return Silent::SpokeHttp(client, sniffed);
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
    Silent::Served
}

/// Makes the close of `client` a reset (`SO_LINGER` 0): a refused caller
/// sees `ECONNRESET`, not an orderly end it might take for an answer.
fn reset(client: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER 0 on a refused stream");
    }
}

/// Route, connect, wait for the first word if the client is `silent`, and
/// copy; `last` is left holding the target connected to (or the last one
/// tried), `request` the latest decision.
async fn run(
    client: &mut TcpStream,
    routes: &dyn Routes,
    pool: &Pool,
    silent: Option<&ProxyConfig>,
    last: &mut Option<Target>,
    request: &mut Option<Box<dyn InFlight>>,
) -> Result<Ended, Error> {
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
    if let Some(cfg) = silent
        && let Some(sniffed) = first_word(client, &upstream, pool, cfg).await?
    {
        return Ok(Ended::SpokeHttp(sniffed));
    }
    let (up, down) = tunnel(client, &[], &mut upstream, &[]).await?;
    Ok(Ended::Copied(up, down))
}

/// Waits for the first word on a connection on which nobody spoke yet. The
/// endpoint's (or its close) leaves it an L4 stream: `None`. The client's
/// bytes are sniffed: HTTP is returned, anything else is `None`. While the
/// router drains, nobody speaking within [`DRAIN_IDLE_GRACE`] ends the
/// stream: nothing is in flight on it, and a drain must not wait for it.
async fn first_word(
    client: &TcpStream,
    upstream: &TcpStream,
    pool: &Pool,
    cfg: &ProxyConfig,
) -> Result<Option<Sniffed>, Error> {
    let mut drain = pool.drain_signal();
    let mut drain_deadline = None;
    loop {
        if drain_deadline.is_none() && *drain.borrow() {
            drain_deadline = Some(deadline_after(DRAIN_IDLE_GRACE));
        }
        tokio::select! {
            ready = upstream.readable() => {
                ready?;
                return Ok(None);
            }
            ready = client.readable() => {
                ready?;
                break;
            }
            _ = drain.changed(), if drain_deadline.is_none() => {}
            () = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                if drain_deadline.is_some() => return Err(Error::Drained),
        }
    }
    match sniff::sniff(client, cfg.header_timeout, cfg.header_timeout).await? {
        sniffed @ (Sniffed::Http1 | Sniffed::Http2) => Ok(Some(sniffed)),
        Sniffed::Opaque | Sniffed::Silent | Sniffed::Closed => Ok(None),
    }
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

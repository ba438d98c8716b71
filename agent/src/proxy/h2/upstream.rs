//! Multiplexed HTTP/2 connections to the endpoints, shared by the streams
//! of all client connections.
//!
//! Each endpoint has a list of connections; a stream goes on the first one
//! that has fewer streams open than the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (and than [`STREAMS_PER_CONNECTION`]),
//! else on a new connection. A connection
//! that received GOAWAY (or failed) takes no new stream; one to an endpoint
//! that is no longer eligible (terminating, removed) leaves the list, and
//! closes once its open streams finished. Connections without a stream for
//! the pool idle timeout are dropped.
//!
//! New connections to one endpoint are opened one at a time, and used only
//! once the peer's SETTINGS are known (a PING answered after them): streams
//! arriving together share the new connection up to its limit instead of
//! each opening its own.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::FutureExt;
use h2::client::SendRequest;

use super::STREAM_WINDOW;
use crate::proxy::pool::{self, Pool};

/// Receive window of each upstream connection.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Streams per upstream connection at most, whatever the peer allows: as
/// many as fill the connection's window with full stream windows, so that
/// the streams of clients that read slowly (whose windows the router
/// releases only as they read) never stall the other clients' streams on a
/// shared connection.
const STREAMS_PER_CONNECTION: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;

/// Why no upstream stream could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The TCP connect failed.
    #[error(transparent)]
    Connect(#[from] pool::Error),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {0}: {1}")]
    Handshake(SocketAddr, #[source] h2::Error),
    /// The peer did not answer the handshake's PING in time.
    #[error("HTTP/2 handshake with {0} timed out")]
    SettingsTimeout(SocketAddr),
}

/// One upstream connection.
struct Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it (leased and not yet dropped).
    open: AtomicUsize,
    /// Set when its connection task ended or it refused a new stream.
    closed: Arc<AtomicBool>,
    /// When its last stream ended.
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    fn expired(&self, idle_timeout: Duration) -> bool {
        self.open.load(Ordering::Relaxed) == 0
            && self
                .idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                >= idle_timeout
    }
}

/// A stream slot on an upstream connection, held while the stream lives.
pub(crate) struct Lease {
    conn: Arc<Conn>,
}

impl Lease {
    /// The connection can take no new stream (it refused one).
    pub(crate) fn retire(&self) {
        self.conn.closed.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self
                .conn
                .idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

struct State {
    by_endpoint: HashMap<SocketAddr, Vec<Arc<Conn>>>,
    /// When every endpoint's list was last rid of expired connections.
    last_sweep: Instant,
    /// Endpoints that may take new streams; `None` until the router says.
    eligible: Option<HashSet<SocketAddr>>,
    draining: bool,
    /// Held while a connection to the endpoint is being opened.
    connecting: HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
}

impl State {
    /// Forgets the connections that are closed or idle past `idle_timeout`:
    /// of `endpoint`, and, at most once per idle timeout, of every endpoint.
    fn sweep(&mut self, endpoint: SocketAddr, idle_timeout: Duration) {
        let keep = |conns: &mut Vec<Arc<Conn>>| {
            conns.retain(|c| c.usable() && !c.expired(idle_timeout));
            !conns.is_empty()
        };
        if self.last_sweep.elapsed() >= idle_timeout {
            self.last_sweep = Instant::now();
            self.by_endpoint.retain(|_, conns| keep(conns));
        } else if let Some(conns) = self.by_endpoint.get_mut(&endpoint)
            && !keep(conns)
        {
            self.by_endpoint.remove(&endpoint);
        }
    }
}

/// The HTTP/2 upstream connections of the router.
pub(crate) struct Upstreams {
    state: Mutex<State>,
    idle_timeout: Duration,
    /// How long the peer may take to answer the handshake (the connect
    /// timeout).
    settings_timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    pub(crate) fn new(idle_timeout: Duration, settings_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                by_endpoint: HashMap::new(),
                last_sweep: Instant::now(),
                eligible: None,
                draining: false,
                connecting: HashMap::new(),
            }),
            idle_timeout,
            settings_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready stream slot to `endpoint`: on a connection with room, else
    /// on a new one (connected through [`Pool::connect`]).
    pub(crate) async fn open(
        &self,
        pool: &Pool,
        endpoint: SocketAddr,
    ) -> Result<(SendRequest<Bytes>, Lease), Error> {
        if let Some(slot) = self.reuse(endpoint) {
            return Ok(slot);
        }
        let connecting = self.lock().connecting.entry(endpoint).or_default().clone();
        let _connecting = connecting.lock().await;
        // Another stream may have opened one meanwhile.
        if let Some(slot) = self.reuse(endpoint) {
            return Ok(slot);
        }
        let conn = self.connect(pool, endpoint).await?;
        let slot = lease(&conn).ok_or_else(|| {
            Error::Handshake(endpoint, h2::Error::from(h2::Reason::REFUSED_STREAM))
        })?;
        drop(_connecting);
        let mut state = self.lock();
        let keep = !state.draining
            && state
                .eligible
                .as_ref()
                .is_none_or(|e| e.contains(&endpoint));
        if keep {
            state.by_endpoint.entry(endpoint).or_default().push(conn);
        }
        Ok(slot)
    }

    /// A slot on an existing connection with room for another stream.
    fn reuse(&self, endpoint: SocketAddr) -> Option<(SendRequest<Bytes>, Lease)> {
        let mut state = self.lock();
        state.sweep(endpoint, self.idle_timeout);
        state.by_endpoint.get(&endpoint)?.iter().find_map(lease)
    }

    /// A new connection to `endpoint`, its task spawned.
    async fn connect(&self, pool: &Pool, endpoint: SocketAddr) -> Result<Arc<Conn>, Error> {
        let stream = pool.connect(endpoint).await?;
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| Error::Handshake(endpoint, e))?;
        let ping = connection.ping_pong();
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
            }
            done.store(true, Ordering::Relaxed);
        });
        // The peer's SETTINGS come before its answer to our PING.
        if let Some(mut ping) = ping {
            match tokio::time::timeout(self.settings_timeout, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                Ok(Err(e)) => return Err(Error::Handshake(endpoint, e)),
                Err(_) => return Err(Error::SettingsTimeout(endpoint)),
            }
        }
        Ok(Arc::new(Conn {
            send,
            open: AtomicUsize::new(0),
            closed,
            idle_since: Mutex::new(Instant::now()),
        }))
    }

    /// New streams go only to `eligible` endpoints: connections to the
    /// others take no new stream and close once their streams finished.
    pub(crate) fn retain_endpoints(&self, eligible: &HashSet<SocketAddr>) {
        let dropped: Vec<Vec<Arc<Conn>>> = {
            let mut state = self.lock();
            let gone: Vec<SocketAddr> = state
                .by_endpoint
                .keys()
                .filter(|e| !eligible.contains(e))
                .copied()
                .collect();
            state.eligible = Some(eligible.clone());
            state.connecting.retain(|e, _| eligible.contains(e));
            gone.iter()
                .filter_map(|e| state.by_endpoint.remove(e))
                .collect()
        };
        drop(dropped);
    }

    /// The router drains: no connection is kept for new streams.
    pub(crate) fn begin_drain(&self) {
        let all = {
            let mut state = self.lock();
            state.draining = true;
            std::mem::take(&mut state.by_endpoint)
        };
        drop(all);
    }

    /// Connections kept for new streams to `endpoint`.
    #[cfg(test)]
    pub(crate) fn connections(&self, endpoint: SocketAddr) -> usize {
        self.lock().by_endpoint.get(&endpoint).map_or(0, Vec::len)
    }
}

/// A slot on `conn`, if the peer's concurrency limit leaves room and the
/// connection still takes streams (a GOAWAY makes it refuse at once).
fn lease(conn: &Arc<Conn>) -> Option<(SendRequest<Bytes>, Lease)> {
    if !conn.usable() {
        return None;
    }
    let open = conn.open.load(Ordering::Relaxed);
    if open
        >= conn
            .send
            .current_max_send_streams()
            .min(STREAMS_PER_CONNECTION)
    {
        return None;
    }
    match conn.send.clone().ready().now_or_never() {
        Some(Ok(send)) => {
            conn.open.fetch_add(1, Ordering::Relaxed);
            Some((send, Lease { conn: conn.clone() }))
        }
        Some(Err(_)) => {
            conn.closed.store(true, Ordering::Relaxed);
            None
        }
        None => None,
    }
}

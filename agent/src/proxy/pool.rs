//! Upstream connections: connecting (with `SO_MARK`, `TCP_NODELAY` and a
//! connect timeout), a per-endpoint pool of idle HTTP/1 keep-alive
//! connections shared by all client connections, and the HTTP/2 engine's
//! multiplexed connections ([`Upstreams`], which connect through
//! [`Pool::connect`] too).
//!
//! Idle connections are kept newest-last per endpoint, at most
//! `pool_max_idle_per_endpoint` of them, and are evicted after
//! `pool_idle_timeout` (lazily: when the endpoint is next used, and by a sweep
//! over all endpoints that runs on release at most once per idle timeout, or
//! explicitly with [`Pool::evict_expired`]). Before an idle connection is
//! reused, a non-blocking `MSG_PEEK` checks that the peer has not closed it and
//! sent no stray bytes.

use std::{
    collections::{HashMap, HashSet},
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::watch,
};

use super::{ProxyConfig, h2::upstream::Upstreams};

/// Upstream connect errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The connect did not complete within the connect timeout.
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// The connect failed (refused, unreachable, ...).
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    /// The socket could not be created or configured.
    #[error("socket for {0}: {1}")]
    Socket(SocketAddr, #[source] io::Error),
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

struct Inner {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    last_sweep: Instant,
    /// Endpoints that may take new requests; `None` until the router says.
    /// Connections to others are not kept (terminating, removed endpoints).
    eligible: Option<HashSet<SocketAddr>>,
}

/// Upstream connection pool shared by all client connections (per endpoint).
pub struct Pool {
    inner: Mutex<Inner>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    mark: u32,
    mark_warned: AtomicBool,
    /// `true` once the router drains (agent shutting down): every client
    /// connection closes after its current request, idle ones at once.
    draining: watch::Sender<bool>,
    /// HTTP/2 upstream connections.
    pub(crate) h2: Upstreams,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Whether an idle connection can carry a new request: the peer has neither
/// closed it nor sent anything (a non-blocking peek would block).
fn is_reusable(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(stream).peek(&mut probe) {
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

impl Pool {
    /// A pool with the limits and connect settings of `cfg`.
    pub fn new(cfg: &ProxyConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                idle: HashMap::new(),
                last_sweep: Instant::now(),
                eligible: None,
            }),
            max_idle: cfg.pool_max_idle_per_endpoint,
            idle_timeout: cfg.pool_idle_timeout,
            connect_timeout: cfg.connect_timeout,
            mark: cfg.socket_mark,
            mark_warned: AtomicBool::new(false),
            draining: watch::channel(false).0,
            h2: Upstreams::new(cfg.pool_idle_timeout, cfg.connect_timeout),
        }
    }

    /// Keeps connections only to `eligible` endpoints from now on: idle
    /// connections to the others (terminating or removed) close now, and
    /// connections to them in use close when their request is done.
    pub fn retain_endpoints(&self, eligible: HashSet<SocketAddr>) {
        let dropped: Vec<Idle> = {
            let mut inner = self.lock();
            let mut dropped = Vec::new();
            inner.idle.retain(|endpoint, list| {
                let keep = eligible.contains(endpoint);
                if !keep {
                    dropped.append(list);
                }
                keep
            });
            self.h2.retain_endpoints(&eligible);
            inner.eligible = Some(eligible);
            dropped
        };
        drop(dropped);
    }

    /// Starts draining: client connections close after their current
    /// request (with `Connection: close`; HTTP/2 ones get GOAWAY and finish
    /// their open streams), idle client and upstream connections close now.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
        self.h2.begin_drain();
        let idle = std::mem::take(&mut self.lock().idle);
        drop(idle);
    }

    /// Whether the router is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Changes of the draining state, for connections waiting idle.
    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of idle connections currently held (all endpoints, including
    /// expired ones not yet evicted).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    /// Close every idle connection older than the pool idle timeout.
    pub fn evict_expired(&self) {
        let expired = {
            let mut inner = self.lock();
            let now = Instant::now();
            inner.last_sweep = now;
            self.sweep(&mut inner, now)
        };
        drop(expired);
    }

    /// Remove expired connections from every endpoint; the caller drops them
    /// after releasing the lock.
    fn sweep(&self, inner: &mut Inner, now: Instant) -> Vec<Idle> {
        let mut expired = Vec::new();
        inner.idle.retain(|_, list| {
            let fresh = list
                .iter()
                .position(|c| now.duration_since(c.since) < self.idle_timeout)
                .unwrap_or(list.len());
            expired.extend(list.drain(..fresh));
            !list.is_empty()
        });
        expired
    }

    /// Take the newest idle connection to `endpoint`, if any is not expired.
    fn take_idle(&self, endpoint: SocketAddr) -> Option<TcpStream> {
        let mut inner = self.lock();
        let list = inner.idle.get_mut(&endpoint)?;
        let conn = list.pop()?;
        if conn.since.elapsed() < self.idle_timeout {
            return Some(conn.stream);
        }
        // The newest is expired, so all are.
        let stale = std::mem::take(list);
        inner.idle.remove(&endpoint);
        drop(inner);
        drop(stale);
        None
    }

    /// A healthy idle connection to `endpoint` (`true`: reused) or a new one.
    pub(crate) async fn get(&self, endpoint: SocketAddr) -> Result<(TcpStream, bool), Error> {
        while let Some(stream) = self.take_idle(endpoint) {
            if is_reusable(&stream) {
                return Ok((stream, true));
            }
            tracing::debug!(%endpoint, "discarding closed pooled connection");
        }
        Ok((self.connect(endpoint).await?, false))
    }

    /// Return a connection whose last response completed cleanly.
    pub(crate) fn put(&self, endpoint: SocketAddr, stream: TcpStream) {
        if self.max_idle == 0 || self.is_draining() {
            return;
        }
        let now = Instant::now();
        let (dropped, expired) = {
            let mut inner = self.lock();
            let expired = if now.duration_since(inner.last_sweep) >= self.idle_timeout {
                inner.last_sweep = now;
                self.sweep(&mut inner, now)
            } else {
                Vec::new()
            };
            if inner
                .eligible
                .as_ref()
                .is_some_and(|e| !e.contains(&endpoint))
            {
                // Terminating or removed: not reused.
                return;
            }
            let list = inner.idle.entry(endpoint).or_default();
            let dropped = if list.len() >= self.max_idle {
                Some(list.remove(0))
            } else {
                None
            };
            list.push(Idle { stream, since: now });
            (dropped, expired)
        };
        drop(dropped);
        drop(expired);
    }

    /// Open a new connection to `endpoint`: `SO_MARK` (if configured) and
    /// `TCP_NODELAY` are set before a non-blocking connect bounded by the
    /// connect timeout.
    pub(crate) async fn connect(&self, endpoint: SocketAddr) -> Result<TcpStream, Error> {
        let socket = Socket::new(
            Domain::for_address(endpoint),
            Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(|e| Error::Socket(endpoint, e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::Socket(endpoint, e))?;
        if self.mark != 0
            && let Err(e) = socket.set_mark(self.mark)
            && !self.mark_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                mark = self.mark,
                error = %e,
                "cannot set SO_MARK on upstream sockets (needs CAP_NET_ADMIN); \
                 upstream traffic may be redirected again"
            );
        }
        if let Err(e) = socket.set_tcp_nodelay(true) {
            tracing::debug!(error = %e, "set TCP_NODELAY on upstream socket");
        }
        let socket = TcpSocket::from_std_stream(socket.into());
        match tokio::time::timeout(self.connect_timeout, socket.connect(endpoint)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Error::Connect(endpoint, e)),
            Err(_) => Err(Error::Timeout(endpoint)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            pool_max_idle_per_endpoint: 2,
            pool_idle_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            ..ProxyConfig::default()
        }
    }

    #[tokio::test]
    async fn reuses_idle_and_bounds_per_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut keep = Vec::new();
            for _ in 0..3 {
                keep.push(listener.accept().await.unwrap().0);
            }
            keep
        });
        let pool = Pool::new(&cfg());
        let (a, reused) = pool.get(addr).await.unwrap();
        assert!(!reused);
        let (b, _) = pool.get(addr).await.unwrap();
        let (c, _) = pool.get(addr).await.unwrap();
        let _server_side = accept.await.unwrap();
        let a_local = a.local_addr().unwrap();
        pool.put(addr, a);
        pool.put(addr, b);
        pool.put(addr, c);
        assert_eq!(pool.idle_count(), 2, "bounded by max idle per endpoint");
        let (again, reused) = pool.get(addr).await.unwrap();
        assert!(reused);
        assert_ne!(again.local_addr().unwrap(), a_local, "oldest was dropped");
    }

    #[tokio::test]
    async fn discards_closed_and_dirty_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(&cfg());
        let (a, _) = pool.get(addr).await.unwrap();
        let (mut sa, _) = listener.accept().await.unwrap();
        let (b, _) = pool.get(addr).await.unwrap();
        let (sb, _) = listener.accept().await.unwrap();
        pool.put(addr, a);
        pool.put(addr, b);
        sa.write_all(b"stray").await.unwrap();
        drop(sb);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Both idle connections are unusable: a fresh one is opened.
        let (fresh, reused) = pool.get(addr).await.unwrap();
        assert!(!reused);
        assert_eq!(pool.idle_count(), 0);
        let (mut sc, _) = listener.accept().await.unwrap();
        drop(fresh);
        let mut buf = [0u8; 1];
        assert_eq!(sc.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn evicts_after_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(&cfg());
        let (a, _) = pool.get(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(addr, a);
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.evict_expired();
        assert_eq!(pool.idle_count(), 0);
        let mut buf = [0u8; 1];
        assert_eq!(server_side.read(&mut buf).await.unwrap(), 0, "closed");
        // An expired connection is never handed out either.
        let (b, _) = pool.get(addr).await.unwrap();
        pool.put(addr, b);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_c, reused) = pool.get(addr).await.unwrap();
        assert!(!reused);
    }

    #[tokio::test]
    async fn connect_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Pool::new(&cfg());
        assert!(matches!(pool.get(addr).await, Err(Error::Connect(..))));
    }

    #[tokio::test]
    async fn sets_mark_and_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(&ProxyConfig {
            socket_mark: 0x1e5,
            ..cfg()
        });
        let stream = pool.connect(addr).await.unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap());
        // Setting SO_MARK needs CAP_NET_ADMIN; without it the connect still
        // works and a warning is logged once.
        if pool.mark_warned.load(Ordering::Relaxed) {
            assert_eq!(sock.mark().unwrap(), 0);
        } else {
            assert_eq!(sock.mark().unwrap(), 0x1e5);
        }
    }
}

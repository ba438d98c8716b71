//! Upstream connections: where their sockets come from, connecting (with
//! `SO_MARK`, `TCP_NODELAY` and a connect timeout), the pools of idle
//! HTTP/1 keep-alive connections, and the HTTP/2 engine's multiplexed
//! connections ([`Upstreams`], which connect through [`Pool::connect`] too).
//!
//! A request from an enrolled pod goes upstream on a socket made inside that
//! pod's network namespace ([`crate::netns::sockets`]): the endpoint sees
//! the pod's own address, so NetworkPolicies, access logs and rate limits
//! keyed by source address see the caller, not the node. Such a connection
//! is the pod's, so idle connections are pooled per (calling pod, endpoint);
//! callers that are no enrolled pod (and every caller with
//! `router.upstream_source: node`) share the node's pool per endpoint.
//! [`Pools`] holds them all; each client connection gets a [`Pool`], its
//! caller's view.
//!
//! Idle connections are kept newest-last per (caller, endpoint), at most
//! `pool_max_idle_per_endpoint` of them and `pool_max_idle_total` in all (the
//! oldest idle connection anywhere makes room), and are evicted after
//! `pool_idle_timeout` (lazily: when the key is next used, and by a sweep
//! over all keys that runs on release at most once per idle timeout, or
//! explicitly with [`Pools::evict_expired`]). When a pod leaves enrolment
//! its idle connections close, and its connections in use close when their
//! request is done. Before an idle connection is reused, a non-blocking
//! `MSG_PEEK` checks that the peer has not closed it and sent no stray bytes.

use std::{
    collections::{HashMap, HashSet},
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
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
use crate::netns::{
    Namespace,
    sockets::{self, SocketFactory},
};

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
    /// The socket could not be made in the calling pod's namespace.
    #[error("socket for {0}: {1}")]
    PodSocket(SocketAddr, #[source] sockets::Error),
}

/// The calling pod's netns cookie; `None`: the node (the caller is no
/// enrolled pod, or upstream connections come from the node's address).
pub type Caller = Option<u64>;

/// What upstream connections are kept by (HTTP/1 idle ones, HTTP/2 ones).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Key {
    /// The calling pod (whose address the connection has).
    pub(crate) caller: Caller,
    /// The endpoint.
    pub(crate) endpoint: SocketAddr,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

struct Inner {
    idle: HashMap<Key, Vec<Idle>>,
    /// Idle connections in `idle`, all keys.
    total: usize,
    last_sweep: Instant,
    /// Endpoints that may take new requests; `None` until the router says.
    /// Connections to others are not kept (terminating, removed endpoints).
    eligible: Option<HashSet<SocketAddr>>,
    /// The enrolled pods' namespaces, by cookie: where their upstream
    /// sockets are made. Connections of callers not here are not kept.
    callers: HashMap<u64, Arc<Namespace>>,
}

impl Inner {
    /// Removes the idle connections of the keys `keep` rejects.
    fn retain(&mut self, mut keep: impl FnMut(&Key) -> bool) -> Vec<Idle> {
        let mut dropped = Vec::new();
        self.idle.retain(|key, list| {
            let kept = keep(key);
            if !kept {
                dropped.append(list);
            }
            kept
        });
        self.total -= dropped.len();
        dropped
    }

    /// Removes the oldest idle connection of all keys.
    fn pop_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .idle
            .iter()
            .filter_map(|(key, list)| list.first().map(|c| (key, c.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let list = self.idle.get_mut(&key)?;
        let oldest = list.remove(0);
        if list.is_empty() {
            self.idle.remove(&key);
        }
        self.total -= 1;
        Some(oldest)
    }
}

/// The router's upstream connections: idle ones per (caller, endpoint), and
/// where new ones' sockets come from.
pub struct Pools {
    inner: Mutex<Inner>,
    max_idle: usize,
    max_idle_total: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    mark: u32,
    mark_warned: AtomicBool,
    /// Makes sockets in pods' namespaces (`None`: the agent's own
    /// namespace could not be opened; logged at start).
    factory: Option<SocketFactory>,
    /// `true` once the router drains (agent shutting down): every client
    /// connection closes after its current request, idle ones at once.
    draining: watch::Sender<bool>,
    /// HTTP/2 upstream connections.
    pub(crate) h2: Upstreams,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("idle", &self.idle_count())
            .field("max_idle", &self.max_idle)
            .field("max_idle_total", &self.max_idle_total)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// One caller's upstream connections: what the engine connects through
/// for one client connection.
#[derive(Clone, Debug)]
pub struct Pool {
    pools: Arc<Pools>,
    caller: Caller,
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

impl Pools {
    /// Pools with the limits and connect settings of `cfg`.
    pub fn new(cfg: &ProxyConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                idle: HashMap::new(),
                total: 0,
                last_sweep: Instant::now(),
                eligible: None,
                callers: HashMap::new(),
            }),
            max_idle: cfg.pool_max_idle_per_endpoint,
            max_idle_total: cfg.pool_max_idle_total,
            idle_timeout: cfg.pool_idle_timeout,
            connect_timeout: cfg.connect_timeout,
            mark: cfg.socket_mark,
            mark_warned: AtomicBool::new(false),
            factory: SocketFactory::new()
                .inspect_err(|e| {
                    tracing::error!(error = %e, "cannot open the agent's network namespace: upstream connections cannot come from the calling pods' addresses");
                })
                .ok(),
            draining: watch::channel(false).0,
            h2: Upstreams::new(cfg.pool_idle_timeout, cfg.connect_timeout),
        }
    }

    /// The upstream connections of `caller`, for one client connection.
    pub fn of(self: &Arc<Self>, caller: Caller) -> Pool {
        Pool {
            pools: self.clone(),
            caller,
        }
    }

    /// Keeps connections only to `eligible` endpoints and of the pods in
    /// `callers` (the enrolled ones, by netns cookie) from now on: idle
    /// connections to the other endpoints (terminating or removed) or of
    /// pods that left close now, and such connections in use close when
    /// their request is done. The namespaces of pods that left are closed
    /// here (once no socket is being made in them).
    pub fn update(&self, eligible: HashSet<SocketAddr>, callers: HashMap<u64, Arc<Namespace>>) {
        let (dropped, left) = {
            let mut inner = self.lock();
            let dropped = inner.retain(|key| {
                eligible.contains(&key.endpoint)
                    && key.caller.is_none_or(|c| callers.contains_key(&c))
            });
            self.h2.retain(&eligible, callers.keys().copied().collect());
            inner.eligible = Some(eligible);
            let left = std::mem::replace(&mut inner.callers, callers);
            (dropped, left)
        };
        drop(dropped);
        drop(left);
    }

    /// Starts draining: client connections close after their current
    /// request (with `Connection: close`; HTTP/2 ones get GOAWAY and finish
    /// their open streams), idle client and upstream connections close now.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
        self.h2.begin_drain();
        let idle = self.lock().retain(|_| false);
        drop(idle);
    }

    /// Whether the router is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of idle connections currently held (all keys, including
    /// expired ones not yet evicted).
    pub fn idle_count(&self) -> usize {
        self.lock().total
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

    /// Remove expired connections from every key; the caller drops them
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
        inner.total -= expired.len();
        expired
    }

    /// Take the newest idle connection of `key`, if any is not expired.
    fn take_idle(&self, key: Key) -> Option<TcpStream> {
        let mut inner = self.lock();
        let list = inner.idle.get_mut(&key)?;
        let conn = list.pop()?;
        let fresh = conn.since.elapsed() < self.idle_timeout;
        // The newest is expired, so all are.
        let stale = if fresh {
            Vec::new()
        } else {
            std::mem::take(list)
        };
        if list.is_empty() {
            inner.idle.remove(&key);
        }
        inner.total -= 1 + stale.len();
        drop(inner);
        drop(stale);
        fresh.then_some(conn.stream)
    }

    /// A healthy idle connection of `key` (`true`: reused) or a new one.
    async fn get(&self, key: Key) -> Result<(TcpStream, bool), Error> {
        while let Some(stream) = self.take_idle(key) {
            if is_reusable(&stream) {
                return Ok((stream, true));
            }
            tracing::debug!(endpoint = %key.endpoint, "discarding closed pooled connection");
        }
        Ok((self.connect(key).await?, false))
    }

    /// Return a connection whose last response completed cleanly.
    fn put(&self, key: Key, stream: TcpStream) {
        if self.max_idle == 0 || self.max_idle_total == 0 || self.is_draining() {
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
            let gone = inner
                .eligible
                .as_ref()
                .is_some_and(|e| !e.contains(&key.endpoint))
                || key.caller.is_some_and(|c| !inner.callers.contains_key(&c));
            if gone {
                // Terminating or removed endpoint, or a pod that left: not
                // reused.
                return;
            }
            let full = inner
                .idle
                .get(&key)
                .is_some_and(|l| l.len() >= self.max_idle);
            let dropped = if full {
                let list = inner.idle.get_mut(&key).map(|l| l.remove(0));
                inner.total -= 1;
                list
            } else if inner.total >= self.max_idle_total {
                inner.pop_oldest()
            } else {
                None
            };
            inner
                .idle
                .entry(key)
                .or_default()
                .push(Idle { stream, since: now });
            inner.total += 1;
            (dropped, expired)
        };
        drop(dropped);
        drop(expired);
    }

    /// Open a new connection for `key`: the socket is made in the calling
    /// pod's namespace (the node's for no caller, or a pod that left), gets
    /// `SO_MARK` (if configured) and `TCP_NODELAY`, then a non-blocking
    /// connect bounded by the connect timeout.
    async fn connect(&self, key: Key) -> Result<TcpStream, Error> {
        let endpoint = key.endpoint;
        let socket = self.socket(key)?;
        match tokio::time::timeout(self.connect_timeout, socket.connect(endpoint)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Error::Connect(endpoint, e)),
            Err(_) => Err(Error::Timeout(endpoint)),
        }
    }

    /// A new socket for `key`, marked and without Nagle, not connected yet.
    fn socket(&self, key: Key) -> Result<TcpSocket, Error> {
        let endpoint = key.endpoint;
        let domain = Domain::for_address(endpoint);
        let netns = key
            .caller
            .and_then(|c| self.lock().callers.get(&c).cloned());
        let socket = match netns {
            Some(netns) => self
                .factory
                .as_ref()
                .ok_or(sockets::Error::Unavailable)
                .and_then(|factory| factory.socket(&netns, domain))
                .map_err(|e| Error::PodSocket(endpoint, e))?,
            None => {
                let socket = Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))
                    .map_err(|e| Error::Socket(endpoint, e))?;
                socket
                    .set_nonblocking(true)
                    .map_err(|e| Error::Socket(endpoint, e))?;
                socket
            }
        };
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
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

impl Pool {
    /// The HTTP/2 upstream connections (of every caller; this caller's are
    /// found with [`Pool::key`]).
    pub(crate) fn h2(&self) -> &Upstreams {
        &self.pools.h2
    }

    /// This caller's key for `endpoint`.
    pub(crate) fn key(&self, endpoint: SocketAddr) -> Key {
        Key {
            caller: self.caller,
            endpoint,
        }
    }

    /// A healthy idle connection to `endpoint` (`true`: reused) or a new one.
    pub(crate) async fn get(&self, endpoint: SocketAddr) -> Result<(TcpStream, bool), Error> {
        self.pools.get(self.key(endpoint)).await
    }

    /// Return a connection whose last response completed cleanly.
    pub(crate) fn put(&self, endpoint: SocketAddr, stream: TcpStream) {
        self.pools.put(self.key(endpoint), stream);
    }

    /// Open a new connection to `endpoint` (see [`Pools`] for where from).
    pub(crate) async fn connect(&self, endpoint: SocketAddr) -> Result<TcpStream, Error> {
        self.pools.connect(self.key(endpoint)).await
    }

    /// Whether the router is draining.
    pub fn is_draining(&self) -> bool {
        self.pools.is_draining()
    }

    /// Changes of the draining state, for connections waiting idle.
    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.pools.draining.subscribe()
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
        let pools = Arc::new(Pools::new(&cfg()));
        let pool = pools.of(None);
        let (a, reused) = pool.get(addr).await.unwrap();
        assert!(!reused);
        let (b, _) = pool.get(addr).await.unwrap();
        let (c, _) = pool.get(addr).await.unwrap();
        let _server_side = accept.await.unwrap();
        let a_local = a.local_addr().unwrap();
        pool.put(addr, a);
        pool.put(addr, b);
        pool.put(addr, c);
        assert_eq!(pools.idle_count(), 2, "bounded by max idle per endpoint");
        let (again, reused) = pool.get(addr).await.unwrap();
        assert!(reused);
        assert_ne!(again.local_addr().unwrap(), a_local, "oldest was dropped");
    }

    #[tokio::test]
    async fn discards_closed_and_dirty_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pools = Arc::new(Pools::new(&cfg()));
        let pool = pools.of(None);
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
        assert_eq!(pools.idle_count(), 0);
        let (mut sc, _) = listener.accept().await.unwrap();
        drop(fresh);
        let mut buf = [0u8; 1];
        assert_eq!(sc.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn evicts_after_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pools = Arc::new(Pools::new(&cfg()));
        let pool = pools.of(None);
        let (a, _) = pool.get(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(addr, a);
        assert_eq!(pools.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        pools.evict_expired();
        assert_eq!(pools.idle_count(), 0);
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
        let pools = Arc::new(Pools::new(&cfg()));
        let pool = pools.of(None);
        assert!(matches!(pool.get(addr).await, Err(Error::Connect(..))));
    }

    #[tokio::test]
    async fn sets_mark_and_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pools = Arc::new(Pools::new(&ProxyConfig {
            socket_mark: 0x1e5,
            ..cfg()
        }));
        let pool = pools.of(None);
        let stream = pool.connect(addr).await.unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap());
        // Setting SO_MARK needs CAP_NET_ADMIN; without it the connect still
        // works and a warning is logged once.
        if pools.mark_warned.load(Ordering::Relaxed) {
            assert_eq!(sock.mark().unwrap(), 0);
        } else {
            assert_eq!(sock.mark().unwrap(), 0x1e5);
        }
    }

    /// Pools whose only endpoint is `endpoint` and whose only enrolled
    /// caller is a pod living in this process's own namespace (making its
    /// sockets there needs CAP_SYS_ADMIN: `None` without), and that caller.
    fn with_own_namespace_as_pod(
        cfg: &ProxyConfig,
        endpoint: SocketAddr,
    ) -> Option<(Arc<Pools>, u64)> {
        let own = crate::netns::open(std::path::Path::new("/proc/self/ns/net")).ok()?;
        let probe = own.file.try_clone().ok()?;
        std::thread::spawn(move || crate::netns::enter(&probe).ok())
            .join()
            .ok()??;
        let cookie = own.cookie;
        let pools = Arc::new(Pools::new(cfg));
        pools.update(
            HashSet::from([endpoint]),
            HashMap::from([(cookie, Arc::new(own))]),
        );
        Some((pools, cookie))
    }

    #[tokio::test]
    async fn idle_connections_are_per_caller_and_close_when_the_pod_leaves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let Some((pools, pod)) = with_own_namespace_as_pod(&cfg(), addr) else {
            eprintln!("skipped: entering a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let (node, pod_pool) = (pools.of(None), pools.of(Some(pod)));
        let (a, _) = pod_pool.get(addr).await.unwrap();
        let (mut pod_side, _) = listener.accept().await.unwrap();
        pod_pool.put(addr, a);
        // The node's caller does not take the pod's connection.
        let (b, reused) = node.get(addr).await.unwrap();
        assert!(!reused);
        let (node_side, _) = listener.accept().await.unwrap();
        node.put(addr, b);
        assert_eq!(pools.idle_count(), 2);
        let (a, reused) = pod_pool.get(addr).await.unwrap();
        assert!(reused, "the pod's own connection");
        pod_pool.put(addr, a);
        // The pod leaves enrolment: its connection closes, the node's stays.
        pools.update(HashSet::from([addr]), HashMap::new());
        assert_eq!(pools.idle_count(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(pod_side.read(&mut buf).await.unwrap(), 0, "closed");
        let (_b, reused) = node.get(addr).await.unwrap();
        assert!(reused);
        // A connection of the pod still in use is not kept either.
        let (c, _) = pod_pool.get(addr).await.unwrap();
        pod_pool.put(addr, c);
        assert_eq!(pools.idle_count(), 0);
        drop(node_side);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_in_all() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ProxyConfig {
            pool_max_idle_total: 2,
            ..cfg()
        };
        let Some((pools, pod)) = with_own_namespace_as_pod(&cfg, addr) else {
            eprintln!("skipped: entering a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let (node, pod_pool) = (pools.of(None), pools.of(Some(pod)));
        let mut open = Vec::new();
        for pool in [&node, &pod_pool, &pod_pool] {
            let (conn, _) = pool.get(addr).await.unwrap();
            open.push((pool, conn, listener.accept().await.unwrap().0));
        }
        let mut server_sides = Vec::new();
        for (pool, conn, server_side) in open {
            pool.put(addr, conn);
            server_sides.push(server_side);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pools.idle_count(), 2, "bounded in all");
        let mut buf = [0u8; 1];
        assert_eq!(
            server_sides[0].read(&mut buf).await.unwrap(),
            0,
            "the oldest (the node's) made room"
        );
        assert!(!node.get(addr).await.unwrap().1);
    }
}

//! The table of open client connections, for `laneway conns`.
//!
//! Entries hold what the router knows (caller, destination, the current
//! request's endpoint and tag); byte counts are read from the kernel's
//! `TCP_INFO` when asked, so the data path pays nothing for them. The socket
//! is identified by its fd and checked against its recorded addresses before
//! reading, because the fd may already be closed and reused by the time the
//! entry goes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::RawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use crate::admin::api::ConnInfo;

/// What changes during a connection's life.
#[derive(Clone, Debug, Default)]
pub struct ConnState {
    /// Endpoint of the request in flight (or the last one).
    pub endpoint: Option<SocketAddr>,
    /// Its tag.
    pub tag: Option<String>,
    /// `sniffing`, `http`, `h2` or `tcp`.
    pub protocol: &'static str,
}

/// One open client connection.
#[derive(Debug)]
pub struct ConnEntry {
    id: u64,
    fd: RawFd,
    peer: SocketAddr,
    local: SocketAddr,
    destination: SocketAddr,
    caller: Option<String>,
    service: Option<String>,
    started: Instant,
    requests: AtomicU64,
    /// Requests (HTTP/2 streams) routed and not finished.
    open: Arc<AtomicU64>,
    state: Mutex<ConnState>,
}

/// One request (stream) open on a connection, until dropped.
#[derive(Debug)]
pub struct OpenStream(Arc<AtomicU64>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnEntry {
    /// Records the routing of a request (or of the L4 stream); it counts
    /// as open until the returned guard drops.
    pub fn routed(
        &self,
        endpoint: SocketAddr,
        tag: Option<String>,
        protocol: &'static str,
    ) -> OpenStream {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.endpoint = Some(endpoint);
        state.tag = tag;
        state.protocol = protocol;
        OpenStream(self.open.clone())
    }

    /// Records the protocol the connection is served as, once detected
    /// (before any request on it is routed).
    pub fn serving(&self, protocol: &'static str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .protocol = protocol;
    }

    fn info(&self) -> ConnInfo {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (bytes_in, bytes_out) = tcp_bytes(self.fd, self.peer, self.local).unwrap_or((0, 0));
        ConnInfo {
            id: self.id,
            caller: self.caller.clone(),
            peer: self.peer.to_string(),
            destination: self.destination.to_string(),
            service: self.service.clone(),
            endpoint: state.endpoint.map(|e| e.to_string()),
            tag: state.tag,
            protocol: state.protocol.to_owned(),
            requests: self.requests.load(Ordering::Relaxed),
            open_streams: self.open.load(Ordering::Relaxed),
            bytes_in,
            bytes_out,
            age_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// The open connections.
#[derive(Debug, Default)]
pub struct ConnTable {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnEntry>>>,
    /// Connections from accept until their handler ends, registered or not.
    handling: Arc<AtomicU64>,
    /// The most connections open at once since [`ConnTable::take_peak`].
    peak: AtomicUsize,
}

/// Counts a connection from the moment it is accepted until its handler
/// ends (drop), so a drain waits also for one accepted just before the
/// listeners closed whose handler has not registered it yet.
#[derive(Debug)]
pub struct Accepted(Arc<AtomicU64>);

impl Drop for Accepted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes its entry from the table when dropped.
#[derive(Debug)]
pub struct Registration {
    table: Arc<ConnTable>,
    /// The entry.
    pub entry: Arc<ConnEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry.id);
    }
}

/// What a new connection is known by.
#[derive(Debug)]
pub struct NewConn {
    /// Its socket.
    pub fd: RawFd,
    /// The client's address.
    pub peer: SocketAddr,
    /// The router's address on it.
    pub local: SocketAddr,
    /// The VIP:port dialled.
    pub destination: SocketAddr,
    /// The calling pod.
    pub caller: Option<String>,
    /// The service.
    pub service: Option<String>,
}

impl ConnTable {
    /// Counts an accepted connection until the returned guard drops.
    pub fn accepted(&self) -> Accepted {
        self.handling.fetch_add(1, Ordering::Relaxed);
        Accepted(self.handling.clone())
    }

    /// Adds a connection; it leaves the table when the registration drops.
    pub fn register(self: &Arc<Self>, conn: NewConn) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ConnEntry {
            id,
            fd: conn.fd,
            peer: conn.peer,
            local: conn.local,
            destination: conn.destination,
            caller: conn.caller,
            service: conn.service,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            open: Arc::default(),
            state: Mutex::new(ConnState {
                protocol: "sniffing",
                ..Default::default()
            }),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(id, entry.clone());
        self.peak.fetch_max(open.len(), Ordering::Relaxed);
        drop(open);
        Registration {
            table: self.clone(),
            entry,
        }
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The most connections open at once since the last call (or since
    /// start); the count starts again from the connections open now.
    pub fn take_peak(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.peak.swap(open.len(), Ordering::Relaxed)
    }

    /// Whether none is open, nor accepted and still to be registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.handling.load(Ordering::Relaxed) == 0
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<ConnInfo> {
        let entries: Vec<Arc<ConnEntry>> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut infos: Vec<ConnInfo> = entries.iter().map(|e| e.info()).collect();
        infos.sort_by_key(|c| c.id);
        infos
    }
}

/// The head of the kernel's `struct tcp_info` up to `tcpi_bytes_received`
/// (glibc's definition stops earlier).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpInfo {
    /// Fields up to and including `tcpi_total_retrans`.
    _head: [u8; 104],
    _pacing_rate: u64,
    _max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

/// Bytes received from and acknowledged by the peer, if `fd` is still the
/// socket between `local` and `peer`.
fn tcp_bytes(fd: RawFd, peer: SocketAddr, local: SocketAddr) -> Option<(u64, u64)> {
    let same =
        |get: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32,
         want: SocketAddr| {
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: storage is large enough for any socket address.
            if unsafe {
                get(
                    fd,
                    (&mut storage as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            } != 0
            {
                return false;
            }
            to_socket_addr(&storage) == Some(want)
        };
    if !same(libc::getpeername, peer) || !same(libc::getsockname, local) {
        return None;
    }
    let mut info = std::mem::MaybeUninit::<TcpInfo>::zeroed();
    let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
    // SAFETY: info is writable for len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < std::mem::size_of::<TcpInfo>() {
        return None;
    }
    // SAFETY: zero-initialised plain data, filled by the kernel.
    let info = unsafe { info.assume_init() };
    Some((info.bytes_received, info.bytes_acked))
}

/// A kernel socket address as a std one (IPv4 and IPv6 only).
fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says this storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn lists_open_connections_with_kernel_byte_counts_and_forgets_closed_ones() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"world!!").unwrap();
        client.read_exact(&mut [0u8; 7]).unwrap();
        let table = Arc::new(ConnTable::default());
        let reg = table.register(NewConn {
            fd: server.as_raw_fd(),
            peer,
            local: server.local_addr().unwrap(),
            destination: "10.96.0.10:80".parse().unwrap(),
            caller: Some("default/client".into()),
            service: Some("default/reviews".into()),
        });
        let open = reg.entry.routed(
            "10.244.0.5:8080".parse().unwrap(),
            Some("joint1".into()),
            "h2",
        );
        let second = reg
            .entry
            .routed("10.244.0.6:8080".parse().unwrap(), None, "h2");
        drop(open);
        let list = table.list();
        assert_eq!(list.len(), 1);
        let c = &list[0];
        assert_eq!((c.bytes_in, c.bytes_out), (5, 7));
        assert_eq!(c.endpoint.as_deref(), Some("10.244.0.6:8080"));
        assert_eq!((c.protocol.as_str(), c.requests), ("h2", 2));
        assert_eq!(c.open_streams, 1, "one stream still open");
        drop(second);
        assert_eq!(table.list()[0].open_streams, 0);
        drop(reg);
        assert!(table.is_empty());
    }

    #[test]
    fn the_peak_counts_connections_open_at_once_since_it_was_last_taken() {
        let table = Arc::new(ConnTable::default());
        let conn = || NewConn {
            fd: -1,
            peer: "10.244.0.2:40000".parse().unwrap(),
            local: "10.244.255.1:15001".parse().unwrap(),
            destination: "10.96.0.10:80".parse().unwrap(),
            caller: None,
            service: None,
        };
        let held: Vec<_> = (0..3).map(|_| table.register(conn())).collect();
        let short = table.register(conn());
        drop(short);
        assert_eq!(table.take_peak(), 4);
        assert_eq!(table.take_peak(), 3, "starts again from those open");
        drop(held);
        assert_eq!(table.take_peak(), 3);
        assert_eq!(table.take_peak(), 0);
    }

    #[test]
    fn an_accepted_connection_not_yet_registered_keeps_the_table_busy() {
        let table = Arc::new(ConnTable::default());
        let accepted = table.accepted();
        assert!(!table.is_empty(), "a drain must wait for it");
        assert_eq!(table.len(), 0, "not listed before it is registered");
        drop(accepted);
        assert!(table.is_empty());
    }
}

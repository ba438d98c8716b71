//! The router's listening sockets: the redirect listeners and TC mode's
//! transparent listener. An overlapping restart shares the running agent's
//! sockets by duplicating them ([`inherit`]); a redirect listener falls
//! back to a second socket on the port (`SO_REUSEPORT`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;
use tracing::{info, warn};

use super::Error;
use crate::{bpf::Datapath, config::Config};

/// `net.ipv4.tcp_migrate_req=1` in this network namespace: connections
/// queued on a closing listener move to another listener of the same
/// SO_REUSEPORT group instead of being reset (Linux 5.14+). Best effort.
pub fn allow_listener_migration() {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    if let Err(e) = std::fs::write(KNOB, "1") {
        warn!(error = %e, "cannot set {KNOB}: an overlapping restart may reset connections queued on the old listener");
    }
}

/// Where redirected IPv4 and IPv6 connects go, checked for their family.
pub fn redirect_addrs(config: &Config) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Error> {
    let v4 = match config.router.redirect_ipv4 {
        IpAddr::V4(v4) => v4,
        addr => {
            return Err(Error::RedirectFamily {
                field: "redirect_ipv4",
                family: "IPv4",
                addr,
            });
        }
    };
    let v6 = match config.router.redirect_ipv6 {
        None => None,
        Some(IpAddr::V6(v6)) => Some(v6),
        Some(addr) => {
            return Err(Error::RedirectFamily {
                field: "redirect_ipv6",
                family: "IPv6",
                addr,
            });
        }
    };
    Ok((Some(v4), v6))
}

/// A redirect listener on `addr`: a duplicate of the running agent's when
/// one serves here (an overlapping restart), else a new one.
///
/// The same socket has the same accept queue: connections queued on it
/// when the old agent closes its copy are accepted here instead of reset. A
/// second socket on the port (`SO_REUSEPORT`) has a queue of its own, which
/// the kernel moves to a sibling on close only with
/// `net.ipv4.tcp_migrate_req` (Linux 5.14).
/// That second socket is the fallback when the running agent's cannot be
/// had: an agent from before listeners were shared, no `CAP_SYS_PTRACE`.
pub async fn redirect(config: &Config, addr: SocketAddr) -> Result<TcpListener, Error> {
    if config.admin.socket.exists() {
        let socket = config.admin.socket.clone();
        match tokio::task::spawn_blocking(move || inherit(&socket, Some(addr))).await {
            Ok(Ok(listener)) => {
                info!(%addr, "sharing the running agent's listener");
                return TcpListener::from_std(listener)
                    .map_err(|source| Error::Listen { addr, source });
            }
            Ok(Err(e)) => {
                info!(%addr, reason = %e, "not sharing a running agent's listener: binding one of its own");
            }
            Err(e) => warn!(%addr, error = %e, "inheriting the listener panicked"),
        }
    }
    bind(addr)
}

/// Takes a duplicate of the listener on `addr` (`None`: the transparent
/// one) of the agent serving the admin socket at `admin_socket`: it names
/// its pid and the fd, and `pidfd_getfd` (Linux 5.6+, needs
/// `CAP_SYS_PTRACE`) gives this process the same listening socket.
fn inherit(
    admin_socket: &std::path::Path,
    addr: Option<SocketAddr>,
) -> Result<std::net::TcpListener, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let path = match addr {
        Some(addr) => format!("/handover/listener?addr={addr}"),
        None => "/handover/listener".to_owned(),
    };
    let found: crate::admin::api::InheritedListener = crate::cli::client::Client::new(admin_socket)
        .get(&path)
        .map_err(|e| e.to_string())?;
    // SAFETY: plain syscalls; each returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, found.pid, 0) };
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("pidfd_open({}): {e}", found.pid));
    }
    // SAFETY: a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), found.fd, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "pidfd_getfd(pid {}, fd {}): {e}",
            found.pid, found.fd
        ));
    }
    // SAFETY: a fresh fd we own, a listening TCP socket by the answer.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd as i32) };
    // An agent from before `addr` was asked for answers with its
    // transparent listener whatever the address.
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(addr) = addr
        && local != addr
    {
        return Err(format!(
            "the running agent answered with its listener on {local}"
        ));
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

/// A new listener on `addr` that an overlapping restart can share.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        // An overlapping restart binds the same port: the kernel spreads new
        // connections over both, and (with tcp_migrate_req) moves those
        // queued on the old listener to the new one when it closes.
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    listen().map_err(|source| Error::Listen { addr, source })
}

/// TC mode: routes marked packets locally, binds the transparent listener
/// (or shares the running agent's) and registers it with the programs.
pub async fn transparent(config: &Config, datapath: &mut Datapath) -> Result<TcpListener, Error> {
    crate::tproxy::route_marked_packets_locally().map_err(Error::Tproxy)?;
    let addr = config.router.tproxy_listen;
    let listener = match crate::tproxy::bind(addr) {
        Ok(listener) => listener,
        // An agent still running here (an overlapping restart): share its
        // listener, as the other listeners share their port, before it
        // hands over.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let socket = config.admin.socket.clone();
            let inherit_failed =
                |message: String| Error::Tproxy(crate::tproxy::Error::Inherit { message });
            let inherited = tokio::task::spawn_blocking(move || inherit(&socket, None))
                .await
                .map_err(|e| inherit_failed(e.to_string()))?
                .map_err(inherit_failed)?;
            info!(%addr, "sharing the running agent's transparent listener");
            TcpListener::from_std(inherited).map_err(|source| Error::Listen { addr, source })?
        }
        Err(source) => return Err(Error::Listen { addr, source }),
    };
    datapath.set_tc_listener(&listener)?;
    Ok(listener)
}

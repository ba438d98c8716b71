//! The router's listening sockets: the redirect listeners (shared with an
//! overlapping restart through `SO_REUSEPORT`) and TC mode's transparent
//! listener (shared by duplicating the running agent's socket).

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

/// A listener on `addr` that an overlapping restart can share.
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
            let inherited = tokio::task::spawn_blocking(move || crate::tproxy::inherit(&socket))
                .await
                .map_err(|e| {
                    Error::Tproxy(crate::tproxy::Error::Inherit {
                        message: e.to_string(),
                    })
                })?
                .map_err(Error::Tproxy)?;
            info!(%addr, "sharing the running agent's transparent listener");
            TcpListener::from_std(inherited).map_err(|source| Error::Listen { addr, source })?
        }
        Err(source) => return Err(Error::Listen { addr, source }),
    };
    datapath.set_tc_listener(&listener)?;
    Ok(listener)
}

//! A namespace's cookie without `SO_NETNS_COOKIE` (Linux 5.10 to 5.13).
//!
//! The agent makes a UDP socket in the namespace and connects it to
//! [`NETNS_PROBE_ADDR`]:[`NETNS_PROBE_PORT`] (a UDP connect sends nothing);
//! laneway's own `connect4` sees that connect, calls `bpf_get_netns_cookie`
//! (cgroup sock_addr programs have it since Linux 5.7) and writes the cookie
//! into the socket's slot in `NETNS_PROBE`. `connect4` only sees sockets of
//! processes inside `bpf.cgroup`, so on these kernels the agent must run
//! there ([`Error::NotSeen`] otherwise, refused at start).

use std::{
    io,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsFd,
    sync::Mutex,
};

use aya::maps::{HashMap, MapData, MapError};
use laneway_common::{NETNS_PROBE_ADDR, NETNS_PROBE_PORT};

/// Why the probe gave no cookie.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No datapath is loaded in this process: nothing would see the connect.
    #[error(
        "SO_NETNS_COOKIE is missing (Linux 5.14) and laneway's connect4 program is not loaded \
         to learn the cookie instead"
    )]
    NoProgram,
    /// Making, connecting or reading the probe socket failed.
    #[error("socket: {0}")]
    Socket(#[from] io::Error),
    /// The probe's slot could not be added, read or removed.
    #[error("netns probe map: {0}")]
    Map(#[from] MapError),
    /// `connect4` did not fill the slot: the agent is outside `bpf.cgroup`.
    #[error(
        "laneway's connect4 program did not see the agent's probe connect: without \
         SO_NETNS_COOKIE (Linux 5.14) the agent learns namespaces' cookies through it, so it \
         must run inside bpf.cgroup"
    )]
    NotSeen,
}

/// The `NETNS_PROBE` map of this process's datapath, once attached.
static PROBE_MAP: Mutex<Option<HashMap<MapData, u64, u64>>> = Mutex::new(None);

/// Makes [`cookie_here`] use `map` (the attached datapath's `NETNS_PROBE`).
pub fn install(map: HashMap<MapData, u64, u64>) {
    *PROBE_MAP.lock().unwrap_or_else(|p| p.into_inner()) = Some(map);
}

/// The cookie of the calling thread's network namespace, learned from
/// `connect4`.
pub fn cookie_here() -> Result<u64, Error> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let socket_cookie = super::socket_option_u64(sock.as_fd(), libc::SO_COOKIE)?;
    let mut guard = PROBE_MAP.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.as_mut().ok_or(Error::NoProgram)?;
    map.insert(socket_cookie, 0, 0)?;
    // The connect's own result does not matter (a namespace whose loopback
    // is down answers ENETUNREACH): connect4 runs before the route lookup.
    let probe = Ipv4Addr::from(NETNS_PROBE_ADDR.to_ne_bytes());
    let _ = sock.connect((probe, NETNS_PROBE_PORT));
    let found = map.get(&socket_cookie, 0);
    map.remove(&socket_cookie)?;
    match found? {
        0 => Err(Error::NotSeen),
        cookie => Ok(cookie),
    }
}

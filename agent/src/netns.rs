//! Network namespaces: a pod's identity to the kernel programs.
//!
//! Enrolment is keyed by the netns cookie (`bpf_get_netns_cookie` in BPF,
//! `SO_NETNS_COOKIE` from userspace, or, before Linux 5.14, [`probe`]), so
//! it does not depend on cgroup layout.
//! Reading a cookie means creating a socket inside the namespace: that is done
//! on a short-lived thread that `setns(CLONE_NEWNET)`s, so the agent itself
//! never changes namespace. The namespace stays open ([`Namespace`]) while
//! its pod is enrolled: the router makes that pod's upstream sockets in it
//! ([`sockets`]).

pub mod sockets;

use std::{
    collections::HashSet,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

pub mod probe;

/// `SO_NETNS_COOKIE` (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Why a namespace's cookie could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `setns` failed (not a netns file, or no CAP_SYS_ADMIN).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Neither `SO_NETNS_COOKIE` nor the [`probe`] gave the cookie.
    #[error("cannot read the netns cookie of {path}: {source}")]
    Cookie {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: probe::Error,
    },
    /// The namespace's links could not be listed (rtnetlink).
    #[error("cannot list the interfaces of network namespace {path}: {source}")]
    Links {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The helper thread died.
    #[error("the thread working in network namespace {0} panicked")]
    Thread(PathBuf),
    /// The helper thread could not be started.
    #[error("cannot start a thread for network namespace {path}: {source}")]
    Spawn {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Opening or entering the namespace did not finish in time (a hung
    /// filesystem, or a path that blocks on open, such as a FIFO).
    #[error(
        "network namespace {path} did not open within {timeout:?}; retried at the next reconcile"
    )]
    Slow {
        /// The path.
        path: PathBuf,
        /// How long it was given.
        timeout: Duration,
    },
}

/// How long reading the cookies of one reconcile's namespaces may take in
/// all: a pod whose namespace is slower is reported, not waited for.
pub const COOKIE_TIMEOUT: Duration = Duration::from_secs(2);

/// Namespaces still being opened by a thread that outlived its
/// [`open_all`] call: never more than one such thread per path.
static PENDING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// An open network namespace (a pod's) and its cookie. Holding it keeps the
/// namespace alive: it is dropped when its pod leaves enrolment.
#[derive(Debug)]
pub struct Namespace {
    /// The namespace's cookie (`SO_NETNS_COOKIE`).
    pub cookie: u64,
    /// The namespace itself, to `setns` into.
    pub file: File,
}

/// The namespaces at `paths`, opened and their cookies read in parallel,
/// one thread each, waiting at most `timeout` in all. A namespace that is
/// slow to open costs its own pod ([`Error::Slow`]), never the others, and
/// the caller is never held longer than `timeout`.
pub fn open_all(paths: &[&Path], timeout: Duration) -> Vec<Result<Namespace, Error>> {
    let pending = |f: &mut dyn FnMut(&mut HashSet<PathBuf>) -> bool| {
        f(PENDING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashSet::new))
    };
    let slow = |path: &Path| Error::Slow {
        path: path.to_owned(),
        timeout,
    };
    let (tx, rx) = mpsc::channel();
    let mut results: Vec<Option<Result<Namespace, Error>>> = Vec::with_capacity(paths.len());
    let mut waiting = 0;
    for (index, path) in paths.iter().enumerate() {
        let owned = path.to_path_buf();
        if !pending(&mut |set| set.insert(owned.clone())) {
            // A thread from an earlier call is still stuck on it.
            results.push(Some(Err(slow(path))));
            continue;
        }
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("laneway-netns".into())
            .spawn(move || {
                let result = open(&owned);
                pending(&mut |set| set.remove(&owned));
                let _ = tx.send((index, result));
            });
        match spawned {
            Ok(_) => {
                waiting += 1;
                results.push(None);
            }
            Err(source) => {
                pending(&mut |set| set.remove(*path));
                results.push(Some(Err(Error::Spawn {
                    path: path.to_path_buf(),
                    source,
                })));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((index, result)) => {
                results[index] = Some(result);
                waiting -= 1;
            }
            Err(_) => break,
        }
    }
    results
        .into_iter()
        .zip(paths)
        .map(|(result, path)| result.unwrap_or_else(|| Err(slow(path))))
        .collect()
}

/// The network namespace at `path` (e.g. `/run/netns/pod` or
/// `/proc/PID/ns/net`), open, with its cookie.
pub fn open(path: &Path) -> Result<Namespace, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let cookie = inside(path, &file, || {
        socket_cookie_here().map_err(|source| Error::Cookie {
            path: path.to_owned(),
            source,
        })
    })?;
    Ok(Namespace { cookie, file })
}

/// Runs `f` on a short-lived thread that entered the network namespace
/// `file` (opened from `path`); the agent itself never changes namespace.
fn inside<T: Send>(
    path: &Path,
    file: &File,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(file).map_err(|source| Error::Enter {
                    path: path.to_owned(),
                    source,
                })?;
                f()
            })
            .join()
            .map_err(|_| Error::Thread(path.to_owned()))?
    })
}

/// Moves the calling thread into the network namespace `ns`.
pub fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace: `SO_NETNS_COOKIE`,
/// or, on a kernel without it (before Linux 5.14), the [`probe`].
pub fn socket_cookie_here() -> Result<u64, probe::Error> {
    match so_netns_cookie_here() {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => probe::cookie_here(),
        other => Ok(other?),
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14+) of a socket made in the calling thread's
/// network namespace.
pub fn so_netns_cookie_here() -> io::Result<u64> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours, freshly created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    socket_option_u64(sock.as_fd(), SO_NETNS_COOKIE)
}

/// The `SOL_SOCKET` option `name` of `sock` whose value is a `u64` (a
/// cookie).
pub(crate) fn socket_option_u64(sock: BorrowedFd<'_>, name: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: value and len are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[test]
    fn the_host_namespace_has_no_pod_veth() {
        // This process's own netns: interfaces here have no peer elsewhere
        // (or, on a node, they might: then it is an ifindex).
        let found = host_peer_ifindex(Path::new("/proc/self/ns/net")).expect("link dump works");
        assert!(found.is_none_or(|i| i > 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_cookie_matches_proc_self() {
        let here = socket_cookie_here().expect("SO_NETNS_COOKIE");
        let via_path = open(Path::new("/proc/self/ns/net")).expect("cookie");
        assert_eq!(here, via_path.cookie);
        assert_ne!(here, 0);
    }

    #[test]
    fn a_namespace_slow_to_open_costs_only_its_own_pod() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("laneway-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("blocks-on-open");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let own = Path::new("/proc/self/ns/net");
        let started = Instant::now();
        let cookies = open_all(&[&fifo, own], Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        assert!(
            matches!(&cookies[0], Err(Error::Slow { .. })),
            "{:?}",
            cookies[0]
        );
        assert_eq!(
            cookies[1].as_ref().unwrap().cookie,
            socket_cookie_here().unwrap()
        );
        // The thread still stuck on it is not joined by a second one.
        let again = open_all(&[&fifo], Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered at once"
        );
        assert!(matches!(&again[0], Err(Error::Slow { .. })));
        // A writer that does not wait releases the stuck reader.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One netlink message: header (length, type), then `payload`.
    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m.resize((len + 3) & !3, 0);
        m
    }

    /// An `RTM_NEWLINK` with `IFLA_LINK` = `link` and, for a veth whose
    /// peer is in another netns, `IFLA_LINK_NETNSID`.
    fn new_link(link: u32, peer_elsewhere: bool) -> Vec<u8> {
        let mut payload = vec![0u8; 16]; // ifinfomsg
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&5u16.to_ne_bytes());
        payload.extend_from_slice(&link.to_ne_bytes());
        if peer_elsewhere {
            payload.extend_from_slice(&8u16.to_ne_bytes());
            payload.extend_from_slice(&37u16.to_ne_bytes());
            payload.extend_from_slice(&0i32.to_ne_bytes());
        }
        nlmsg(16, &payload)
    }

    #[test]
    fn a_link_dump_finds_the_first_link_whose_peer_is_elsewhere() {
        let mut found = None;
        let first = [new_link(1, false), new_link(7, true)].concat();
        assert!(read_link_dump(&first, &mut found).is_none(), "goes on");
        let rest = [new_link(9, true), nlmsg(3, &[0; 4])].concat();
        assert_eq!(read_link_dump(&rest, &mut found).unwrap().unwrap(), Some(7));
    }

    #[test]
    fn a_failed_link_dump_is_its_errno_not_an_empty_answer() {
        let mut found = None;
        let error = nlmsg(2, &(-libc::EPERM).to_ne_bytes());
        let e = read_link_dump(&error, &mut found).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // An acknowledgement (errno 0) ends the dump with what was found.
        let ack = [new_link(4, true), nlmsg(2, &0i32.to_ne_bytes())].concat();
        assert_eq!(read_link_dump(&ack, &mut found).unwrap().unwrap(), Some(4));
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let e = open(Path::new("/run/netns/does-not-exist")).expect_err("missing");
        assert!(e.to_string().contains("/run/netns/does-not-exist"), "{e}");
    }
}

/// The node-side end of the pod's veth: the ifindex, in the caller's netns,
/// of the peer of the first interface in the netns at `path` whose peer lives
/// in another netns (a pod's `eth0`). Found with an rtnetlink link dump from
/// inside the pod's netns.
pub fn host_peer_ifindex(path: &Path) -> Result<Option<u32>, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    inside(path, &file, || {
        link_dump_peer().map_err(|source| Error::Links {
            path: path.to_owned(),
            source,
        })
    })
}

/// rtnetlink: dump the links of this thread's netns; the `IFLA_LINK` of the
/// first one that also has `IFLA_LINK_NETNSID` (its peer is elsewhere).
fn link_dump_peer() -> io::Result<Option<u32>> {
    const RTM_GETLINK: u16 = 18;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours, freshly created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel answers a dump at once; a reader that waits longer is
    // stuck (a lost message), and must not hold a reconcile forever.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a timeval of the size given, on our socket.
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // nlmsghdr (16) + ifinfomsg (16), all zero but length, type and flags.
    let mut request = [0u8; 32];
    request[0..4].copy_from_slice(&32u32.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    // SAFETY: sending our buffer on our socket (to the kernel: no address).
    if unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut found = None;
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(end) = read_link_dump(&buf[..n as usize], &mut found) {
            return end;
        }
    }
}

/// One datagram of an rtnetlink link dump: records in `found` the
/// `IFLA_LINK` of the first link that also has `IFLA_LINK_NETNSID`, and
/// says whether the dump ended (`Some`: its outcome) or goes on.
fn read_link_dump(mut msg: &[u8], found: &mut Option<u32>) -> Option<io::Result<Option<u32>>> {
    const RTM_NEWLINK: u16 = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const IFLA_LINK: u16 = 5;
    const IFLA_LINK_NETNSID: u16 = 37;
    while msg.len() >= 16 {
        let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        let kind = u16::from_ne_bytes([msg[4], msg[5]]);
        if kind == NLMSG_DONE || len < 16 || len > msg.len() {
            return Some(Ok(*found));
        }
        // The dump failed: an nlmsgerr (a negative errno first) ends it,
        // and no NLMSG_DONE follows.
        if kind == NLMSG_ERROR {
            let errno = msg
                .get(16..20)
                .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
            return Some(match errno {
                0 => Ok(*found),
                e => Err(io::Error::from_raw_os_error(-e)),
            });
        }
        if kind == RTM_NEWLINK && found.is_none() {
            // ifinfomsg (16 bytes), then attributes.
            let mut attrs = msg.get(32..len).unwrap_or(&[]);
            let (mut link, mut elsewhere) = (None, false);
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                match (atype, &attrs[4..alen]) {
                    (IFLA_LINK, [a, b, c, d]) => link = Some(u32::from_ne_bytes([*a, *b, *c, *d])),
                    (IFLA_LINK_NETNSID, _) => elsewhere = true,
                    _ => {}
                }
                attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
            }
            if elsewhere {
                *found = link;
            }
        }
        msg = &msg[((len + 3) & !3).min(msg.len())..];
    }
    None
}

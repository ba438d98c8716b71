//! Network namespaces: a pod's identity to the kernel programs.
//!
//! Enrolment is keyed by the netns cookie (`bpf_get_netns_cookie` in BPF,
//! `SO_NETNS_COOKIE` from userspace), so it does not depend on cgroup layout.
//! Reading a cookie means creating a socket inside the namespace: that is done
//! on a short-lived thread that `setns(CLONE_NEWNET)`s, so the agent itself
//! never changes namespace.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

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
    /// The kernel lacks `SO_NETNS_COOKIE`.
    #[error(
        "cannot read the netns cookie of {path}: {source} (needs SO_NETNS_COOKIE, Linux 5.14+)"
    )]
    Cookie {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The helper thread died.
    #[error("the thread reading the netns cookie of {0} panicked")]
    Thread(PathBuf),
}

/// The cookie of the network namespace at `path` (e.g. `/run/netns/pod` or
/// `/proc/PID/ns/net`).
pub fn cookie_of(path: &Path) -> Result<u64, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let owned = path.to_owned();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(&file).map_err(|source| Error::Enter {
                    path: path.to_owned(),
                    source,
                })?;
                socket_cookie_here().map_err(|source| Error::Cookie {
                    path: path.to_owned(),
                    source,
                })
            })
            .join()
            .map_err(|_| Error::Thread(owned))?
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

/// The cookie of the calling thread's network namespace.
pub fn socket_cookie_here() -> io::Result<u64> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours, freshly created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_cookie_matches_proc_self() {
        let here = socket_cookie_here().expect("SO_NETNS_COOKIE");
        let via_path = cookie_of(Path::new("/proc/self/ns/net")).expect("cookie");
        assert_eq!(here, via_path);
        assert_ne!(here, 0);
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let e = cookie_of(Path::new("/run/netns/does-not-exist")).expect_err("missing");
        assert!(e.to_string().contains("/run/netns/does-not-exist"), "{e}");
    }
}

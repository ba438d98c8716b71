//! Sockets made inside a pod's network namespace, for the router's upstream
//! connections: a connection from such a socket leaves with the pod's own
//! address and the replies come back to it through the pod's interface, as
//! the pod's own connections do (ztunnel's in-pod mode does the same).
//!
//! A namespace applies to a socket when it is created; the socket then
//! works from any thread. So the calling thread (a tokio worker) enters the
//! pod's namespace, creates the socket and goes back at once, with nothing
//! else in between: two `setns` and a `socket`, about 20 µs, no thread hop.
//! A first version handed the work to a dedicated thread; under load the
//! extra wakeup per new connection made requests slower, the pool churned
//! more and the test endpoints' accept queues overflowed (`load` suite).
//! A thread that could not go back would make the node's sockets in a
//! pod's namespace from then on: the process aborts instead.

use std::{fs::File, io};

use socket2::{Domain, Protocol, Socket, Type};

use super::{Namespace, enter};

/// Why no socket could be made in a pod's namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `setns` into the pod's namespace failed (no CAP_SYS_ADMIN).
    #[error("cannot enter the network namespace of the calling pod: {0}")]
    Enter(#[source] io::Error),
    /// `socket(2)` failed inside it.
    #[error("cannot create a socket in the calling pod's network namespace: {0}")]
    Socket(#[source] io::Error),
    /// The agent's own namespace could not be opened at start, so no
    /// thread could come back from a pod's.
    #[error(
        "sockets cannot be made in pods' network namespaces: the agent's own could not be opened"
    )]
    Unavailable,
}

/// Makes TCP sockets inside pods' network namespaces from the calling
/// thread, which it brings back to the agent's namespace.
#[derive(Debug)]
pub struct SocketFactory {
    /// The agent's own namespace, where every thread returns.
    home: File,
}

impl SocketFactory {
    /// A factory whose threads return to the calling thread's namespace
    /// (the agent's).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            home: File::open("/proc/thread-self/ns/net")?,
        })
    }

    /// A new non-blocking TCP socket of `domain` inside `netns`.
    pub fn socket(&self, netns: &Namespace, domain: Domain) -> Result<Socket, Error> {
        // A failed setns leaves the thread where it was.
        enter(&netns.file).map_err(Error::Enter)?;
        let socket = new_socket(domain).map_err(Error::Socket);
        if let Err(e) = enter(&self.home) {
            tracing::error!(error = %e, "cannot return to the agent's network namespace after making an upstream socket in a pod's: aborting");
            std::process::abort();
        }
        socket
    }
}

/// A non-blocking, close-on-exec TCP socket in the calling thread's
/// namespace.
fn new_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::socket_cookie_here;

    /// The cookie of the namespace a socket was made in.
    fn cookie(socket: &Socket) -> u64 {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: cookie and len are valid for the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                super::super::SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        cookie
    }

    /// A fresh network namespace (needs CAP_SYS_ADMIN; `None` without).
    fn fresh_namespace() -> Option<Namespace> {
        std::thread::spawn(|| {
            // SAFETY: affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let file = File::open("/proc/thread-self/ns/net").ok()?;
            let cookie = socket_cookie_here().ok()?;
            Some(Namespace { cookie, file })
        })
        .join()
        .ok()
        .flatten()
    }

    #[test]
    fn makes_sockets_in_the_given_namespace_and_comes_back() {
        let Some(pod) = fresh_namespace() else {
            eprintln!("skipped: creating a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let here = socket_cookie_here().unwrap();
        assert_ne!(pod.cookie, here);
        let factory = SocketFactory::new().unwrap();
        for domain in [Domain::IPV4, Domain::IPV6] {
            let socket = factory.socket(&pod, domain).expect("socket");
            assert_eq!(cookie(&socket), pod.cookie, "made in the pod's namespace");
            assert!(socket.nonblocking().unwrap());
            assert_eq!(socket_cookie_here().unwrap(), here, "and back home");
        }
    }
}

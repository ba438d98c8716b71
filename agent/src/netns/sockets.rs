//! Sockets made inside a pod's network namespace, for the router's upstream
//! connections: a connection from such a socket leaves with the pod's own
//! address and the replies come back to it through the pod's interface, as
//! the pod's own connections do (ztunnel's in-pod mode does the same).
//!
//! A namespace applies to a socket when it is created; the socket then
//! works from any thread. Creating one means being in the namespace, so one
//! dedicated thread ([`SocketFactory`]) does it: it `setns`es into the pod's
//! namespace, creates the socket, and goes back to the agent's namespace once
//! no more requests wait (a thread in a namespace keeps it alive). No tokio
//! worker ever changes namespace.

use std::{
    fs::File,
    io,
    sync::{Arc, Mutex, mpsc},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use super::{Namespace, enter};

/// Why no socket could be made in a pod's namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `setns` into the pod's namespace failed (it is gone, or no
    /// CAP_SYS_ADMIN).
    #[error("cannot enter the network namespace of the calling pod: {0}")]
    Enter(#[source] io::Error),
    /// `socket(2)` failed inside it.
    #[error("cannot create a socket in the calling pod's network namespace: {0}")]
    Socket(#[source] io::Error),
    /// The factory's thread could not start, or stopped (it could not go
    /// back to the agent's namespace).
    #[error("the socket factory thread is not running")]
    Stopped,
}

/// One socket to make.
struct Job {
    netns: Arc<Namespace>,
    domain: Domain,
    reply: oneshot::Sender<Result<Socket, Error>>,
}

/// Makes TCP sockets inside pods' network namespaces, on a thread of its own.
#[derive(Debug)]
pub struct SocketFactory {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Default for SocketFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketFactory {
    /// Starts the factory's thread (in the calling thread's namespace, the
    /// agent's). If it cannot start, every request fails with
    /// [`Error::Stopped`].
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = File::open("/proc/thread-self/ns/net").and_then(|home| {
            std::thread::Builder::new()
                .name("laneway-sockets".into())
                .spawn(move || serve(&home, &rx))
        });
        if let Err(e) = &started {
            tracing::error!(error = %e, "cannot start the thread that makes upstream sockets in pods' namespaces");
        }
        Self {
            jobs: Mutex::new(started.ok().map(|_| tx)),
        }
    }

    /// A new non-blocking TCP socket of `domain` inside `netns`.
    pub async fn socket(&self, netns: Arc<Namespace>, domain: Domain) -> Result<Socket, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            netns,
            domain,
            reply,
        };
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let sent = jobs.as_ref().map(|tx| tx.send(job));
            if !matches!(sent, Some(Ok(()))) {
                return Err(Error::Stopped);
            }
        }
        answer.await.map_err(|_| Error::Stopped)?
    }
}

/// The factory thread: one job at a time, entering each job's namespace
/// (unless already there) and going `home` whenever the queue is empty.
fn serve(home: &File, jobs: &mpsc::Receiver<Job>) {
    // The cookie of the pod namespace this thread is in; `None`: home.
    let mut inside: Option<u64> = None;
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {
                if inside.take().is_some()
                    && let Err(e) = enter(home)
                {
                    // Staying in a pod's namespace would keep it alive
                    // after the pod is gone: stop instead.
                    tracing::error!(error = %e, "cannot return to the agent's network namespace; upstream sockets are made in the node's from now on");
                    return;
                }
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        let mut socket = Ok(());
        if inside != Some(job.netns.cookie) {
            // A failed setns leaves the thread where it was.
            socket = enter(&job.netns.file).map_err(Error::Enter);
            if socket.is_ok() {
                inside = Some(job.netns.cookie);
            }
        }
        let socket = socket.and_then(|()| new_socket(job.domain).map_err(Error::Socket));
        // The caller may have given up (connect timeout): the socket closes.
        let _ = job.reply.send(socket);
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
    use crate::netns::{open, socket_cookie_here};
    use std::path::Path;

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

    #[tokio::test]
    async fn makes_sockets_in_the_given_namespace() {
        let Some(pod) = fresh_namespace() else {
            eprintln!("skipped: creating a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let here = socket_cookie_here().unwrap();
        assert_ne!(pod.cookie, here);
        let pod = Arc::new(pod);
        let factory = SocketFactory::new();
        for domain in [Domain::IPV4, Domain::IPV6, Domain::IPV4] {
            let socket = factory.socket(pod.clone(), domain).await.expect("socket");
            assert_eq!(cookie(&socket), pod.cookie, "made in the pod's namespace");
            assert!(socket.nonblocking().unwrap());
        }
        // The agent's own namespace is untouched (this thread never moved).
        assert_eq!(socket_cookie_here().unwrap(), here);
        let own = Arc::new(open(Path::new("/proc/self/ns/net")).unwrap());
        let socket = factory.socket(own, Domain::IPV4).await.expect("socket");
        assert_eq!(cookie(&socket), here, "and back in another namespace");
    }
}

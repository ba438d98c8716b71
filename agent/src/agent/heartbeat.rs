//! The router's heartbeat: the programs redirect only while the `ROUTER`
//! entry's heartbeat is younger than [`laneway_common::HEARTBEAT_TIMEOUT_NS`].
//!
//! It beats on a thread of its own through a map handle of its own
//! ([`bpf::RouterMap`]): no reconcile holding the datapath lock, no busy
//! runtime worker and no slow network namespace can delay it past the
//! timeout and make the whole node fail open. A hung agent (all threads
//! stopped) still stops beating, which is what fail-open is for.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use tracing::{error, warn};

use crate::bpf::{self, RouterMap};

/// How often the router tells the programs it is alive: a quarter of the
/// programs' timeout, so one late beat never trips fail-open.
pub const EVERY: Duration = Duration::from_millis(200);

/// What the router writes into the programs' `ROUTER` entry.
#[derive(Clone, Copy, Debug)]
pub struct RouterEntry {
    /// Where redirected IPv4 (and v4-mapped) connects go.
    pub redirect4: Option<Ipv4Addr>,
    /// Where redirected IPv6 connects go (none: not redirected).
    pub redirect6: Option<Ipv6Addr>,
    /// The router's port.
    pub port: u16,
    /// The mark on the router's own sockets.
    pub mark: u32,
}

/// Why the heartbeat could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first beat could not be written.
    #[error("cannot write the router's heartbeat: {0}")]
    Map(#[from] bpf::Error),
    /// The thread could not be started.
    #[error("cannot start the heartbeat thread: {0}")]
    Thread(std::io::Error),
}

/// How the heartbeat stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Clear the heartbeat: the programs fail open at once (a clean stop).
    Clear,
    /// Leave the entry as it is: a successor writes it (a handover).
    Leave,
}

/// The beating thread; [`Heartbeat::stop`] ends it.
pub struct Heartbeat {
    stop: mpsc::Sender<Stop>,
    thread: JoinHandle<()>,
}

impl Heartbeat {
    /// Writes a first beat (the agent cannot route without it), then beats
    /// every [`EVERY`] on a thread.
    pub fn start(mut map: RouterMap, entry: RouterEntry) -> Result<Self, Error> {
        beat(&mut map, entry, bpf::monotonic_ns())?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("laneway-heartbeat".into())
            .spawn(move || run(map, entry, stopped))
            .map_err(Error::Thread)?;
        Ok(Self { stop, thread })
    }

    /// Stops beating; with [`Stop::Clear`] the programs stop redirecting at
    /// once instead of after the timeout.
    pub fn stop(self, how: Stop) {
        let _ = self.stop.send(how);
        if self.thread.join().is_err() {
            warn!("the heartbeat thread panicked");
        }
    }
}

fn run(mut map: RouterMap, entry: RouterEntry, stopped: mpsc::Receiver<Stop>) {
    loop {
        match stopped.recv_timeout(EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = beat(&mut map, entry, bpf::monotonic_ns()) {
                    error!(error = %e, "heartbeat failed; programs fail open until it recovers");
                }
            }
            Ok(Stop::Clear) => {
                if let Err(e) = beat(&mut map, entry, 0) {
                    warn!(error = %e, "could not clear the heartbeat");
                }
                return;
            }
            Ok(Stop::Leave) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Writes the entry with heartbeat `now_ns` (0: gone, fail open now).
fn beat(map: &mut RouterMap, entry: RouterEntry, now_ns: u64) -> Result<(), bpf::Error> {
    map.set(&bpf::router_info(
        entry.redirect4,
        entry.redirect6,
        entry.port,
        entry.mark,
        now_ns,
    ))
}

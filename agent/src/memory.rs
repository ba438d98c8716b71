//! Gives freed heap back to the kernel after a spike of connections.
//!
//! Each client connection costs the router a few KiB of heap (buffers, its
//! task, its table entry). glibc's allocator keeps freed memory in its
//! arenas for reuse instead of returning it, so after 10,000 connections
//! close the agent's RSS would stay at its high-water mark for good, counted
//! against the pod's memory limit and taken from the node. When the open
//! connections fall well below their peak since the last look,
//! `malloc_trim` returns the free pages. It does not run on a plain timer:
//! under steady load that would only make the next connections fault the
//! same pages in again.

use std::{sync::Arc, time::Duration};

use tracing::debug;

use crate::router::conns::ConnTable;

/// How often the connection peak is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Connections fewer than at the peak that make a trim worth it: at a few
/// KiB each, some MiB to give back.
const DROP_WORTH_TRIMMING: usize = 1_000;

/// Whether `open` connections, after at most `peak` at once since the last
/// look, left enough freed memory behind to trim.
fn worth_trimming(peak: usize, open: usize) -> bool {
    peak >= open + DROP_WORTH_TRIMMING
}

/// Trims the heap whenever the connections in `conns` fell far below their
/// peak; runs until the runtime stops.
pub async fn trim_after_spikes(conns: Arc<ConnTable>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let peak = conns.take_peak();
        let open = conns.len();
        if worth_trimming(peak, open) {
            // It walks every arena under its lock: not on a runtime worker.
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            debug!(
                peak,
                open, released, "heap trimmed after connections closed"
            );
        }
    }
}

/// `malloc_trim(0)`: whether memory went back to the kernel.
#[cfg(target_env = "gnu")]
fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's
    // own locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's) return freed memory themselves.
#[cfg(not(target_env = "gnu"))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_many_connections_closed() {
        assert!(worth_trimming(10_000, 0));
        assert!(worth_trimming(10_500, 9_500));
        assert!(
            !worth_trimming(10_000, 9_500),
            "steady load: keep the pages"
        );
        assert!(!worth_trimming(999, 0), "too few to matter");
        assert!(!worth_trimming(0, 0));
    }
}

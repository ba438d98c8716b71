//! Draining on the way out: stop taking connections, let in-flight
//! requests finish, and return when none is left or the timeout passed.

use std::time::Duration;

use tracing::{info, warn};

use crate::router::Router;

/// How long the router keeps accepting after the heartbeat is cleared:
/// connects that passed the programs just before still find a listener.
const ACCEPT_GRACE: Duration = Duration::from_millis(300);

/// Drains the router: stops taking connections, lets in-flight requests
/// finish (each client connection closes after its current request), and
/// returns when none is left or `timeout` passed.
pub async fn drain(
    router: &Router,
    accepting: Vec<tokio::task::JoinHandle<()>>,
    timeout: Duration,
) {
    router.begin_drain();
    tokio::time::sleep(ACCEPT_GRACE).await;
    for task in accepting {
        task.abort();
    }
    let conns = &router.telemetry.conns;
    let deadline = tokio::time::Instant::now() + timeout;
    info!(open = conns.len(), ?timeout, "draining client connections");
    while !conns.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match conns.len() {
        0 => info!("drained: every client connection finished"),
        open => warn!(open, "drain timeout: closing the remaining connections"),
    }
}

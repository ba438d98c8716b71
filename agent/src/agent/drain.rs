//! Draining on the way out: stop taking connections, let in-flight
//! requests finish, and return when none is left or the timeout passed.

use std::time::Duration;

use tracing::{info, warn};

use crate::router::{Router, conns::ConnTable};

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
    let halfway = tokio::time::Instant::now() + timeout / 2;
    let mut told = false;
    info!(open = conns.len(), ?timeout, "draining client connections");
    while !conns.is_empty() && tokio::time::Instant::now() < deadline {
        if !told && tokio::time::Instant::now() >= halfway {
            told = true;
            info!(open = conns.len(), "still draining");
            name_open(&router.telemetry.conns);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match conns.len() {
        0 => info!("drained: every client connection finished"),
        open => {
            warn!(open, "drain timeout: closing the remaining connections");
            name_open(&router.telemetry.conns);
        }
    }
}

/// Logs the open connections a drain waits for (the first few), so a slow
/// drain says what holds it: an L4 stream, a long request, a quiet client.
fn name_open(conns: &ConnTable) {
    const NAMED: usize = 10;
    for conn in conns.list().into_iter().take(NAMED) {
        info!(
            peer = conn.peer,
            destination = conn.destination,
            protocol = conn.protocol,
            open_streams = conn.open_streams,
            requests = conn.requests,
            age_ms = conn.age_ms,
            "draining: connection still open"
        );
    }
}

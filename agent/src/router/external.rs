//! Health checks of external endpoints (a lane served from outside the
//! cluster, `external_lanes`): they come and go (a laptop sleeps, a VPN
//! drops), so the agent probes each with a TCP connect every
//! `router.external_health_interval`, and at once when a new state brings
//! new ones. A probe connects from the node (the agent's network namespace)
//! with the router's socket mark, like the router's own upstream sockets;
//! it is healthy when the connect succeeds within
//! `router.external_health_timeout`. The result lives in the endpoint's
//! shared [`EndpointLoad`], which the router consults per request
//! ([`crate::snapshot::Backend::available`]): no new snapshot is needed
//! when an endpoint comes or goes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tracing::{info, warn};

use super::Router;
use crate::snapshot::EndpointLoad;

/// How often and how patiently external endpoints are probed.
#[derive(Clone, Copy, Debug)]
pub struct Probing {
    /// Between two rounds of probes.
    pub interval: Duration,
    /// A probe that has not connected by then failed.
    pub timeout: Duration,
}

/// Probes the external endpoints of the router's state, forever (the task
/// ends with the agent).
pub async fn check(router: Arc<Router>, probing: Probing) {
    loop {
        let targets = router.applied().snapshot.external_endpoints();
        let probes = targets
            .iter()
            .map(|(addr, load)| probe(&router, *addr, load, probing.timeout));
        futures::future::join_all(probes).await;
        tokio::select! {
            () = tokio::time::sleep(probing.interval) => {}
            () = router.external_changed.notified() => {}
        }
    }
}

/// One probe of `addr`; logs when its health changes.
async fn probe(router: &Router, addr: SocketAddr, load: &EndpointLoad, timeout: Duration) {
    let connected = tokio::time::timeout(timeout, router.pools.of(None).connect(addr)).await;
    let result = match connected {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no connect within {}",
            humantime::format_duration(timeout)
        )),
    };
    if load.set_reachable(result.is_ok()) {
        match result {
            Ok(()) => info!(endpoint = %addr, "external endpoint answers: its lane is served"),
            Err(error) => warn!(endpoint = %addr, %error, "external endpoint does not answer"),
        }
    }
}

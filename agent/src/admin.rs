//! The admin endpoints.
//!
//! - A JSON API on a Unix socket (mode 0600: root only) that the CLI
//!   (`laneway status|pods|services|conns|explain|trace|maps`) talks to; the
//!   documents are in [`api`].
//! - On a local TCP address (`admin.listen`): `/healthz` (the process
//!   serves), `/readyz` (the first snapshot from the source of truth is
//!   applied: with the Kubernetes source, only after the first full sync) and
//!   `/metrics` (Prometheus text, see [`metrics`]); and the lane map, a page
//!   at `/ui` (see [`ui`]) reading `/lanes` (see [`lane_map`]), which the
//!   Unix socket serves too. No secrets are served.

pub mod api;
pub mod lane_map;
pub mod metrics;
mod server;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};

pub use server::{AdminState, Error, ListenerFd, owner, serve_http, serve_unix, take_over};

/// Liveness and readiness, shared with the rest of the agent.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the agent ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

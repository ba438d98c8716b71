//! laneway: a Kubernetes node agent that keeps every request in its lane
//! without sidecars.
//!
//! eBPF socket programs ([`bpf`]) redirect enrolled pods' connections to
//! service VIPs to a per-node [`router`], which routes each HTTP request
//! ([`proxy`]) to an endpoint of the service carrying the request's tag
//! ([`route`]), by an immutable [`snapshot`] of the cluster built from a
//! source of truth ([`config`] in standalone mode).

pub mod admin;
pub mod agent;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod explain;
pub mod fuzz;
pub mod kernel_lanes;
pub mod kube;
pub mod memory;
pub mod netns;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod route;
pub mod router;
pub mod snapshot;
pub mod tproxy;

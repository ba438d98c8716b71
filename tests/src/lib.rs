//! A Kubernetes node built from network namespaces, for laneway's root-only
//! integration tests and its demo.
//!
//! A [`Node`] is a node netns (where the agent runs, with a kube-proxy
//! stand-in made of real iptables DNAT rules) and pod netns joined to it by
//! veth pairs. Nothing in it has a route to the outside world: the node netns
//! has no uplink, and pods route only the pod and service ranges to the node.
//! The test process joins a dedicated child cgroup, where the agent attaches
//! its programs, so pod sockets it creates are seen by them and nothing else on
//! the machine is. Everything is removed on drop, also after a failed test,
//! and leftovers of killed runs are swept at the next start.

pub mod agent;
pub mod backend;
pub mod client;
pub mod kube;
pub mod netns;
pub mod node;
pub mod standard;

pub use agent::Agent;
pub use node::{Node, Pod, Scenario, ServiceSpec};
pub use standard::Standard;

/// Fails unless running as root: the integration tests must never pass by
/// being skipped.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "laneway's integration tests need root (they load BPF programs and create network \
         namespaces): run them with `cargo xtask test` as root"
    );
}

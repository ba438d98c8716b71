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

pub mod admin;
pub mod agent;
pub mod backend;
pub mod browser;
pub mod client;
pub mod grpc;
pub mod kube;
pub mod netns;
pub mod node;
pub mod shares;
pub mod standard;
pub mod view;

pub use agent::Agent;

/// Sets its flag when dropped: a test's background workers loop until the
/// flag is set, and a scope waits for them, so a failed assertion (or an
/// early `?`) in the scope must still stop them.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
pub use node::{Node, NodeOptions, Pod, Scenario, ServiceSpec};
pub use standard::Standard;

/// The fields of a `/proc/PID/stat` (or `task/TID/stat`) line after
/// `(comm)`, which may itself hold spaces and parentheses: `state ppid ...`.
pub fn proc_stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn proc_stat_fields_skip_a_comm_with_spaces_and_parens() {
        let fields = super::proc_stat_fields("42 (a (b) c) S 7 42 42 0");
        assert_eq!(&fields[..2], ["S", "7"]);
    }
}

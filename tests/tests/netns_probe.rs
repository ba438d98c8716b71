//! How the agent learns a pod's network-namespace cookie where the kernel
//! has no `SO_NETNS_COOKIE` (Linux 5.10 to 5.13): a probe connect seen by
//! laneway's own `connect4` (`laneway::netns::probe`). Run as root through
//! `cargo xtask test`, and on every kernel of the matrix
//! (`cargo xtask test --kernel all`).

use std::{fs::File, path::Path};

use anyhow::Result;
use laneway::{bpf::Datapath, netns};
use laneway_tests::Node;

/// `f`'s answer from a thread inside the network namespace at `path`.
fn inside<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(path)?;
    Ok(std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns::enter(&ns).expect("setns");
                f()
            })
            .join()
            .expect("the probe thread")
    }))
}

#[test]
fn the_probe_learns_each_pods_own_cookie_the_one_so_netns_cookie_gives() -> Result<()> {
    let mut node = Node::new()?;
    let first = node.add_pod("probe-a")?;
    let second = node.add_pod("probe-b")?;
    let _datapath = Datapath::attach(node.cgroup(), &node.pin_path())?;
    let probe = |pod: usize| -> Result<(u64, Option<u64>)> {
        inside(&node.pod(pod).netns.path(), || {
            let learned = netns::probe::cookie_here().expect("the probe's cookie");
            (learned, netns::so_netns_cookie_here().ok())
        })
    };
    let (a, a_by_option) = probe(first)?;
    let (b, b_by_option) = probe(second)?;
    assert_ne!(a, b, "two namespaces, two cookies");
    assert_eq!(probe(first)?.0, a, "a namespace keeps its cookie");
    // Where the kernel has SO_NETNS_COOKIE (5.14+), both ways agree.
    if let (Some(a_by_option), Some(b_by_option)) = (a_by_option, b_by_option) {
        assert_eq!((a, b), (a_by_option, b_by_option));
    }
    Ok(())
}

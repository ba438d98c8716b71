//! The node as a Kubernetes node: each pod gets a process in a kubelet-style
//! pod cgroup (`kubepods/pod<UID>`, so the agent finds its network namespace
//! the way it does on a real node), and a Kubernetes API stand-in
//! (laneway-kube-fake, the real list/watch wire protocol) listens on the
//! node netns' loopback for the agent.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::{Context, Result};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
pub use laneway_kube_fake::objects::namespace;
use laneway_kube_fake::{FakeApiServer, objects};

use crate::node::{Node, ServiceSpec as Spec};

/// The name the agent is told is its node's.
pub const NODE_NAME: &str = "node-1";

/// The API stand-in and the pods' processes; stops them on drop.
pub struct Cluster {
    /// The API server stand-in.
    pub api: FakeApiServer,
    /// The kubeconfig file pointing at it (from the node netns).
    pub kubeconfig: PathBuf,
    processes: Vec<(Child, PathBuf)>,
    kubepods: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// Starts the API stand-in inside the node netns.
    pub fn start(node: &Node) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = node.netns.run(|| TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        let api = {
            let _guard = runtime.enter();
            FakeApiServer::start(listener)
        };
        let kubeconfig = node.dir().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig_yaml())?;
        let kubepods = node.cgroup().join("kubepods");
        std::fs::create_dir_all(&kubepods)?;
        Ok(Self {
            api,
            kubeconfig,
            processes: Vec::new(),
            kubepods,
            _runtime: runtime,
        })
    }

    /// Gives pod `index` a process in its netns and in cgroup
    /// `kubepods/pod<UID>`, as kubelet and the container runtime would.
    pub fn run_pod_process(&mut self, node: &Node, index: usize) -> Result<()> {
        let pod = node.pod(index);
        let cgroup = self
            .kubepods
            .join(format!("pod{}", objects::pod_uid(&pod.name)));
        std::fs::create_dir_all(&cgroup)?;
        let child = pod
            .netns
            .command("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("spawn pod process")?;
        // `ip netns exec` execs sleep in place: the PID is the pod process.
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string())
            .with_context(|| format!("move pod process into {}", cgroup.display()))?;
        self.processes.push((child, cgroup));
        Ok(())
    }
}

impl Cluster {
    /// Pod `index` as a pod of this node ([`NODE_NAME`]) in `namespace`,
    /// with its tag label: its process ([`Cluster::run_pod_process`]) and
    /// its Pod object.
    pub fn run_local_pod(
        &mut self,
        node: &Node,
        index: usize,
        namespace: &str,
        tag: Option<&str>,
    ) -> Result<()> {
        self.run_pod_process(node, index)?;
        self.api.apply(pod(node, index, namespace, NODE_NAME, tag));
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, cgroup) in &self.processes {
            let _ = std::fs::remove_dir(cgroup);
        }
        let _ = std::fs::remove_dir(&self.kubepods);
    }
}

/// The API with the standard scenario's `client` enrolled (namespace `shop`,
/// labelled) and the `reviews` Service object given, with the EndpointSlice
/// and the pods of its endpoints (namespace `backends`, on another node).
pub fn reviews_cluster(
    node: &Node,
    scenario: &crate::Scenario,
    pods: &crate::standard::Pods,
    reviews: Service,
) -> Result<Cluster> {
    let mut cluster = Cluster::start(node)?;
    cluster.api.apply(namespace("shop", true));
    cluster.run_local_pod(node, pods.client, "shop", None)?;
    let svc = &scenario.services[0];
    for (index, tag) in &svc.endpoints {
        cluster
            .api
            .apply(pod(node, *index, "backends", "node-2", tag.as_deref()));
    }
    let (_, slice) = service(node, svc, "backends");
    cluster.api.apply(reviews);
    cluster.api.apply(slice);
    Ok(cluster)
}

/// Pod `index` of the node as a Pod object on `node_name`, with a tag label.
pub fn pod(node: &Node, index: usize, namespace: &str, node_name: &str, tag: Option<&str>) -> Pod {
    let p = node.pod(index);
    objects::pod(namespace, &p.name, node_name, &p.ip.to_string(), tag)
}

/// A scenario service as a Service and its EndpointSlice.
pub fn service(node: &Node, spec: &Spec, namespace: &str) -> (Service, EndpointSlice) {
    let port = i32::from(spec.port);
    let target = i32::from(spec.target_port);
    let svc = objects::service(
        namespace,
        &spec.name,
        &spec.vip.to_string(),
        &[("main", port, target)],
    );
    let endpoints: Vec<(String, String)> = spec
        .endpoints
        .iter()
        .map(|(index, _)| {
            (
                node.pod(*index).name.clone(),
                node.pod(*index).ip.to_string(),
            )
        })
        .collect();
    let endpoints: Vec<(&str, &str, bool)> = endpoints
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str(), false))
        .collect();
    let slice = objects::endpoint_slice(
        namespace,
        &spec.name,
        &format!("{}-1", spec.name),
        ("main", target),
        &endpoints,
    );
    (svc, slice)
}

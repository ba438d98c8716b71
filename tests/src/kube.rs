//! The node as a Kubernetes node: each pod gets a process in a kubelet-style
//! pod cgroup (`kubepods/pod<UID>`, so the agent finds its network namespace
//! the way it does on a real node), and a Kubernetes API stand-in
//! (laneway-kube-fake, the real list/watch wire protocol) listens on the
//! node netns' loopback for the agent.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{
            Namespace, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use laneway_kube_fake::FakeApiServer;

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
        let cgroup = self.kubepods.join(format!("pod{}", uid(&pod.name)));
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

/// A stable UID per pod name.
pub fn uid(name: &str) -> String {
    let sum: u32 = name.bytes().map(u32::from).sum();
    format!("{sum:08x}-0000-4000-8000-{:012x}", name.len())
}

fn meta(ns: Option<&str>, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: Some(labels),
        ..Default::default()
    }
}

/// A namespace, enrolled (`laneway.io/enabled=true`) or not.
pub fn namespace(name: &str, enabled: bool) -> Namespace {
    let mut labels = BTreeMap::new();
    if enabled {
        labels.insert("laneway.io/enabled".into(), "true".into());
    }
    Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

/// Pod `index` of the node as a Pod object on `node_name`, with a tag label.
pub fn pod(node: &Node, index: usize, namespace: &str, node_name: &str, tag: Option<&str>) -> Pod {
    let p = node.pod(index);
    let mut labels = BTreeMap::new();
    if let Some(t) = tag {
        labels.insert("laneway.io/tag".into(), t.into());
    }
    let mut metadata = meta(Some(namespace), &p.name, labels);
    metadata.uid = Some(uid(&p.name));
    Pod {
        metadata,
        spec: Some(PodSpec {
            node_name: Some(node_name.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(p.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: p.ip.to_string(),
            }]),
            ..Default::default()
        }),
    }
}

/// A scenario service as a Service and its EndpointSlice.
pub fn service(node: &Node, spec: &Spec, namespace: &str) -> (Service, EndpointSlice) {
    let svc = Service {
        metadata: meta(Some(namespace), &spec.name, BTreeMap::new()),
        spec: Some(ServiceSpec {
            cluster_ip: Some(spec.vip.to_string()),
            cluster_ips: Some(vec![spec.vip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some("main".into()),
                port: i32::from(spec.port),
                target_port: Some(IntOrString::Int(i32::from(spec.target_port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/service-name".into(), spec.name.clone());
    let slice = EndpointSlice {
        metadata: meta(Some(namespace), &format!("{}-1", spec.name), labels),
        address_type: "IPv4".into(),
        endpoints: Some(
            spec.endpoints
                .iter()
                .map(|(index, _)| {
                    let p = node.pod(*index);
                    Endpoint {
                        addresses: vec![p.ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: Some(p.name.clone()),
                            namespace: Some(namespace.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("main".into()),
            port: Some(i32::from(spec.target_port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    (svc, slice)
}

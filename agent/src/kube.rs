//! The Kubernetes source of truth.
//!
//! Reflectors (kube-rs watchers with their stores) follow Namespaces, Pods,
//! Services and EndpointSlices. Any change wakes a debounced builder that
//! turns the stores into the same [`Config`] services and pods a static file
//! holds, so both sources produce the same [`crate::snapshot::Snapshot`].
//! Watch errors, expired resource versions (410) and API outages are retried
//! with backoff by the watchers; meanwhile nothing new is built and the data
//! path keeps the last good snapshot. Nothing is sent before every store has
//! finished its first full list: the agent is ready only after that.
//!
//! Pods are enrolled only on this node (`spec.nodeName`), in namespaces
//! labelled `laneway.io/enabled=true`, unless the pod itself says
//! `laneway.io/enabled=false` or uses the host network. Endpoints are routed
//! to cluster-wide, each tagged with its pod's tag label.

mod netns_finder;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, future::ready};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, PodSpec, PodStatus, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

pub use netns_finder::NetnsFinder;

use crate::config::{self, AppProtocol, Config, Endpoint, Port, ServicePort};

/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How often pods whose network namespace was not found are looked for again.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(2);

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster config.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The client could not be built.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// `--kube` without a node name.
    #[error(
        "the Kubernetes source needs this node's name: set NODE_NAME (downward API spec.nodeName) or --node-name"
    )]
    NoNodeName,
}

/// A pod that should be enrolled but is not, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unenrolled {
    /// `namespace/name`.
    pub pod: String,
    /// Why.
    pub reason: String,
}

/// What the source wants the data path to be.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Services and pods, in the static file's types.
    pub config: Arc<Config>,
    /// Pods that should be enrolled and are not.
    pub unenrolled: Vec<Unenrolled>,
    /// Services whose policy annotations are bad: `(namespace/name, error)`.
    /// Each keeps its last good policy.
    pub policy_errors: Vec<(String, String)>,
}

/// The last good policy of each service, by `(namespace, name)`.
type LastGoodPolicies = HashMap<(String, String), Option<crate::policy::PolicySpec>>;

/// Builds a client from a kubeconfig file, or infers one (in-cluster service
/// account, then `KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// The reflector stores.
#[derive(Clone)]
struct Stores {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

/// Starts the watchers; sends a [`Desired`] after the first full sync and
/// after every (debounced) change. Runs until the receiver is dropped.
pub async fn run(
    client: Client,
    node_name: String,
    base: Config,
    tx: watch::Sender<Option<Desired>>,
) {
    let changed = Arc::new(Notify::new());
    let stores = Stores {
        namespaces: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        pods: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        services: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
        ),
        slices: reflect(Api::all(client), watcher::Config::default(), &changed),
    };
    info!(node = %node_name, "waiting for the first full sync with the Kubernetes API");
    for ready in [
        stores.namespaces.wait_until_ready().await,
        stores.pods.wait_until_ready().await,
        stores.services.wait_until_ready().await,
        stores.slices.wait_until_ready().await,
    ] {
        if ready.is_err() {
            return;
        }
    }
    info!("first full sync with the Kubernetes API done");
    let mut finder = NetnsFinder::new(base.kube.proc_root.clone());
    let mut last_good = LastGoodPolicies::new();
    loop {
        // Building scans /proc and enters pods' namespaces: blocking work,
        // kept off the runtime worker other tasks wait for.
        let desired = tokio::task::block_in_place(|| {
            build(&stores, &node_name, &base, &mut finder, &mut last_good)
        });
        for (service, error) in &desired.policy_errors {
            warn!(%service, %error, "bad policy annotation; the service keeps its last good policy");
        }
        let retry = !desired.unenrolled.is_empty();
        for u in &desired.unenrolled {
            warn!(pod = %u.pod, reason = %u.reason, "pod not enrolled");
        }
        if tx.send(Some(desired)).is_err() {
            return;
        }
        if retry {
            let _ = tokio::time::timeout(RETRY_UNRESOLVED, changed.notified()).await;
        } else {
            changed.notified().await;
        }
        // Let a burst of changes land, then build once.
        tokio::time::sleep(base.kube.debounce).await;
    }
}

/// A reflector for `K`, notifying `changed` on every event; retried with
/// backoff on errors (410 Gone makes the watcher re-list).
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let changed = changed.clone();
    let kind = K::kind(&()).into_owned();
    let stream =
        reflector::reflector(writer, watcher(api, config).modify(K::slim)).default_backoff();
    tokio::spawn(stream.for_each(move |event| {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => warn!(%kind, error = %e, "watch failed; retrying with backoff, routing by the last good state"),
        }
        ready(())
    }));
    store
}

/// Drops what [`build`] never reads before an object enters a store, so a
/// big cluster's stores do not hold every object's `managedFields`,
/// `last-applied-configuration` annotation or containers. Whatever `build`
/// starts reading must be kept here (the `slim_objects_build_the_same`
/// test compares).
trait Slim {
    fn slim(&mut self);
}

/// Keeps the identity, labels (tag and enrolment labels are configurable)
/// and deletion mark; keeps only the annotations `keep_annotation` accepts.
fn slim_meta(meta: &mut ObjectMeta, keep_annotation: impl Fn(&str) -> bool) {
    let full = std::mem::take(meta);
    *meta = ObjectMeta {
        name: full.name,
        namespace: full.namespace,
        uid: full.uid,
        resource_version: full.resource_version,
        labels: full.labels,
        deletion_timestamp: full.deletion_timestamp,
        annotations: full
            .annotations
            .map(|a| {
                a.into_iter()
                    .filter(|(k, _)| keep_annotation(k))
                    .collect::<BTreeMap<_, _>>()
            })
            .filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    };
}

impl Slim for Namespace {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, |_| false);
        self.spec = None;
        self.status = None;
    }
}

impl Slim for Pod {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, |_| false);
        self.spec = self.spec.take().map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            ..PodSpec::default()
        });
        self.status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..PodStatus::default()
        });
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, |k| {
            k.starts_with(crate::policy::ANNOTATION_PREFIX)
        });
        self.status = None;
    }
}

impl Slim for EndpointSlice {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, |_| false);
    }
}

/// Turns the stores into the desired services and pods.
fn build(
    stores: &Stores,
    node_name: &str,
    base: &Config,
    finder: &mut NetnsFinder,
    last_good: &mut LastGoodPolicies,
) -> Desired {
    let tag_label = &base.tags.pod_label;
    let pods = stores.pods.state();
    let tag_of: HashMap<(String, String), Option<config::Tag>> = pods
        .iter()
        .map(|p| {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            (key, pod_tag(p, tag_label))
        })
        .collect();
    let mut slices_by_service: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in stores.slices.state() {
        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            let key = (slice.namespace().unwrap_or_default(), svc.clone());
            slices_by_service.entry(key).or_default().push(slice);
        }
    }
    let mut services = Vec::new();
    let mut policy_errors = Vec::new();
    for svc in stores.services.state() {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = slices_by_service
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let annotations = svc
            .annotations()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let policy = match crate::policy::PolicySpec::from_annotations(annotations) {
            Ok(spec) => {
                last_good.insert(key.clone(), spec.clone());
                spec
            }
            Err(e) => {
                policy_errors.push((format!("{}/{}", key.0, key.1), e));
                last_good.get(&key).cloned().flatten()
            }
        };
        if let Some(mut s) = service(&svc, slices, &tag_of) {
            s.policy = policy;
            services.push(s);
        }
    }
    services.sort_by(|a, b| {
        (a.namespace.as_str(), a.name.as_str()).cmp(&(b.namespace.as_str(), b.name.as_str()))
    });

    let label = &base.kube.namespace_label;
    let enabled: HashSet<String> = stores
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.labels().get(label).is_some_and(|v| v == "true"))
        .map(|ns| ns.name_any())
        .collect();
    let local: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name))
        .filter(|p| enabled.contains(&p.namespace().unwrap_or_default()))
        .filter(|p| p.labels().get(label).is_none_or(|v| v != "false"))
        .filter(|p| {
            !p.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        // A completed pod (a finished Job's) has no process left to find: it
        // would be reported and looked for again every RETRY_UNRESOLVED forever.
        .filter(|p| !is_completed(p))
        .collect();
    let uids: Vec<String> = local.iter().filter_map(|p| p.uid()).collect();
    let mut found = finder.find(&uids);
    let mut enrolled = Vec::new();
    let mut unenrolled = Vec::new();
    for pod in local {
        let id = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let ips = pod_ips(pod);
        if ips.is_empty() {
            // Not started yet: it gets its IP (and processes) soon.
            debug!(pod = %id, "pod has no IP yet");
            continue;
        }
        let netns = match pod.uid().and_then(|uid| found.remove(&uid)) {
            Some(Ok(path)) => path,
            Some(Err(reason)) => {
                unenrolled.push(Unenrolled { pod: id, reason });
                continue;
            }
            None => {
                unenrolled.push(Unenrolled {
                    pod: id,
                    reason: "pod has no UID".into(),
                });
                continue;
            }
        };
        let (Ok(name), Ok(namespace)) = (
            pod.name_any().parse(),
            pod.namespace().unwrap_or_default().parse(),
        ) else {
            continue;
        };
        // The node side of the pod's veth, for TC mode.
        let interface = crate::netns::host_peer_ifindex(&netns)
            .ok()
            .flatten()
            .and_then(|index| nix::net::if_::if_indextoname(index).ok())
            .map(|name| name.to_string_lossy().into_owned());
        enrolled.push(config::Pod {
            name,
            namespace,
            tag: pod_tag(pod, tag_label),
            netns,
            ips,
            interface,
        });
    }
    let mut config = base.clone();
    config.services = services;
    config.pods = enrolled;
    Desired {
        config: Arc::new(config),
        unenrolled,
        policy_errors,
    }
}

/// Whether the pod has finished for good (phase `Succeeded` or `Failed`):
/// its containers will not run again.
fn is_completed(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_tag(pod: &Pod, label: &str) -> Option<config::Tag> {
    let value = pod.labels().get(label)?;
    match value.parse() {
        Ok(tag) => Some(tag),
        Err(e) => {
            debug!(pod = %pod.name_any(), "ignoring the tag label: {e}");
            None
        }
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_ref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// A Service with its endpoints, or `None` when it has nothing to redirect
/// (headless, ExternalName, no TCP port).
fn service(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    tag_of: &HashMap<(String, String), Option<config::Tag>>,
) -> Option<config::Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    // `clusterIP` is `clusterIPs[0]` on current servers; it is read too for
    // objects written by older ones. Each VIP once, primary family first.
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
    {
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                port: Port::try_from(u64::try_from(p.port).ok()?).ok()?,
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => {
                        u64::try_from(*n).ok().and_then(|n| Port::try_from(n).ok())
                    }
                    _ => None,
                },
                protocol: app_protocol(p.app_protocol.as_deref()),
            })
        })
        .collect();
    if vips.is_empty() || ports.is_empty() {
        return None;
    }
    let namespace = svc.namespace().unwrap_or_default();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut seen = HashSet::new();
    for slice in slices {
        let slice_ports: BTreeMap<String, Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = Port::try_from(u64::try_from(p.port?).ok()?).ok()?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let pod_name = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            let tag = pod_name
                .as_ref()
                .and_then(|name| tag_of.get(&(namespace.clone(), name.clone())))
                .cloned()
                .flatten();
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                if !seen.insert(ip) {
                    continue;
                }
                endpoints.push(Endpoint {
                    ip,
                    tag: tag.clone(),
                    serving,
                    terminating,
                    name: pod_name.clone(),
                    ports: slice_ports.clone(),
                });
            }
        }
    }
    Some(config::Service {
        name: svc.name_any().parse().ok()?,
        namespace: namespace.parse().ok()?,
        vips,
        ports,
        endpoints,
        policy: None,
    })
}

/// `appProtocol` to how the router treats the port: `http` is parsed,
/// protocols known not to be HTTP/1 are passed through, anything else sniffed.
fn app_protocol(value: Option<&str>) -> AppProtocol {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("http") => AppProtocol::Http,
        Some("http2" | "grpc" | "kubernetes.io/h2c") => AppProtocol::Http2,
        Some("tcp" | "https" | "tls" | "kubernetes.io/wss") => AppProtocol::Tcp,
        _ => AppProtocol::Auto,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, PodCondition},
        apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };
    use laneway_kube_fake::objects;

    use super::*;

    /// What a real API server adds to every object and `build` never reads.
    fn verbose(meta: &mut ObjectMeta) {
        meta.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-client-side-apply".into()),
            operation: Some("Update".into()),
            ..ManagedFieldsEntry::default()
        }]);
        meta.annotations.get_or_insert_default().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{\"apiVersion\":\"v1\"}".into(),
        );
    }

    fn store_of<K>(objects: &[K], slim: bool) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Slim + Clone,
    {
        let (store, mut writer) = reflector::store();
        for obj in objects {
            let mut obj = obj.clone();
            if slim {
                obj.slim();
            }
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        store
    }

    #[test]
    fn slim_objects_build_the_same() {
        let mut namespaces = vec![objects::namespace("shop", true)];
        let mut client = objects::pod("shop", "client", "node-a", "10.244.0.10", Some("gray"));
        client.spec.get_or_insert_default().containers = vec![Container {
            name: "app".into(),
            image: Some("example/app:1".into()),
            ..Container::default()
        }];
        client.status.get_or_insert_default().conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]);
        let mut done = objects::pod("shop", "job", "node-a", "10.244.0.11", None);
        done.status.get_or_insert_default().phase = Some("Succeeded".into());
        let mut host = objects::pod("shop", "host", "node-a", "10.0.0.5", None);
        host.spec.get_or_insert_default().host_network = Some(true);
        let mut pods = vec![
            client,
            done,
            host,
            objects::pod("shop", "lost", "node-a", "10.244.0.12", None),
            objects::pod("shop", "reviews-1", "node-b", "10.244.1.20", Some("joint1")),
        ];
        let mut svc = objects::service("shop", "reviews", "10.96.0.10", &[("http", 80, 8080)]);
        svc.metadata.annotations = Some(BTreeMap::from([(
            "laneway.io/canary".to_string(),
            "gray=10".to_string(),
        )]));
        svc.spec
            .get_or_insert_default()
            .ports
            .get_or_insert_default()[0]
            .app_protocol = Some("http".into());
        let mut services = vec![svc];
        let mut slices = vec![objects::endpoint_slice(
            "shop",
            "reviews",
            "reviews-abc",
            ("http", 8080),
            &[("reviews-1", "10.244.1.20", false)],
        )];
        for meta in namespaces
            .iter_mut()
            .map(|o| &mut o.metadata)
            .chain(pods.iter_mut().map(|o| &mut o.metadata))
            .chain(services.iter_mut().map(|o| &mut o.metadata))
            .chain(slices.iter_mut().map(|o| &mut o.metadata))
        {
            verbose(meta);
        }

        let proc_root = std::env::temp_dir().join(format!("laneway-slim-{}", std::process::id()));
        let pid = proc_root.join("100");
        std::fs::create_dir_all(pid.join("ns")).expect("fake /proc");
        std::fs::write(
            pid.join("cgroup"),
            format!("0::/kubepods/pod{}/c\n", objects::pod_uid("client")),
        )
        .expect("fake /proc");
        std::fs::write(pid.join("ns/net"), "").expect("fake /proc");
        let mut base = Config::default();
        base.kube.proc_root = proc_root.clone();
        let desired = |slim: bool| {
            let stores = Stores {
                namespaces: store_of(&namespaces, slim),
                pods: store_of(&pods, slim),
                services: store_of(&services, slim),
                slices: store_of(&slices, slim),
            };
            let mut finder = NetnsFinder::new(proc_root.clone());
            let d = build(&stores, "node-a", &base, &mut finder, &mut HashMap::new());
            (stores, d)
        };
        let (full_stores, full) = desired(false);
        let (slim_stores, slim) = desired(true);
        let _ = std::fs::remove_dir_all(&proc_root);

        assert_eq!(full.config.pods.len(), 1, "{:?}", full.config.pods);
        assert_eq!(full.unenrolled.len(), 1, "{:?}", full.unenrolled);
        assert!(full.config.services[0].policy.is_some());
        assert_eq!(format!("{:?}", slim.config), format!("{:?}", full.config));
        assert_eq!(slim.unenrolled, full.unenrolled);
        assert_eq!(slim.policy_errors, full.policy_errors);

        // And the stores really hold less.
        let slim_pod = slim_stores
            .pods
            .state()
            .into_iter()
            .find(|p| p.name_any() == "client")
            .expect("client");
        assert!(slim_pod.metadata.managed_fields.is_none());
        assert!(slim_pod.metadata.annotations.is_none());
        assert!(slim_pod.spec.as_ref().expect("spec").containers.is_empty());
        assert!(
            slim_pod
                .status
                .as_ref()
                .expect("status")
                .conditions
                .is_none()
        );
        let slim_svc = &slim_stores.services.state()[0];
        assert_eq!(
            slim_svc.annotations().keys().collect::<Vec<_>>(),
            vec!["laneway.io/canary"]
        );
        assert!(slim_svc.metadata.managed_fields.is_none());
        assert!(
            full_stores.services.state()[0]
                .metadata
                .managed_fields
                .is_some()
        );
        assert!(
            slim_stores.slices.state()[0]
                .metadata
                .managed_fields
                .is_none()
        );
        assert!(
            slim_stores.namespaces.state()[0]
                .metadata
                .annotations
                .is_none()
        );
    }

    #[test]
    fn a_dual_stack_service_has_each_vip_once_primary_family_first() {
        let mut svc = objects::service("shop", "reviews", "10.96.0.10", &[("http", 80, 8080)]);
        let spec = svc.spec.as_mut().expect("spec");
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00:96::10".into()]);
        let s = service(&svc, &[], &HashMap::new()).expect("redirectable");
        let v4: IpAddr = "10.96.0.10".parse().expect("ip");
        let v6: IpAddr = "fd00:96::10".parse().expect("ip");
        assert_eq!(s.vips, vec![v4, v6]);

        // IPv6-primary: clusterIP is the IPv6 address.
        let spec = svc.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("fd00:96::10".into());
        spec.cluster_ips = Some(vec!["fd00:96::10".into(), "10.96.0.10".into()]);
        let s = service(&svc, &[], &HashMap::new()).expect("redirectable");
        assert_eq!(s.vips, vec![v6, v4]);
    }

    #[test]
    fn a_headless_service_is_not_redirected() {
        let mut svc = objects::service("shop", "reviews", "None", &[("http", 80, 8080)]);
        assert!(service(&svc, &[], &HashMap::new()).is_none());
        svc.spec.as_mut().expect("spec").cluster_ips = None;
        assert!(service(&svc, &[], &HashMap::new()).is_none());
    }

    #[test]
    fn app_protocol_http_and_http2_are_parsed_known_non_http_passed_through_the_rest_sniffed() {
        let ports = [
            ("plain", 80, None),
            ("web", 81, Some("http")),
            ("web-upper", 82, Some("HTTP")),
            ("grpc", 83, Some("grpc")),
            ("h2c", 84, Some("kubernetes.io/h2c")),
            ("tls", 85, Some("https")),
            ("custom", 86, Some("example.com/thing")),
        ];
        let names: Vec<(&str, i32, i32)> = ports.iter().map(|(n, p, _)| (*n, *p, *p)).collect();
        let mut svc = objects::service("shop", "reviews", "10.96.0.10", &names);
        for (port, (_, _, app)) in svc
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .expect("ports")
            .iter_mut()
            .zip(ports)
        {
            port.app_protocol = app.map(Into::into);
        }
        let s = service(&svc, &[], &HashMap::new()).expect("redirectable");
        let got: Vec<(Option<&str>, AppProtocol)> = s
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.protocol))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("plain"), AppProtocol::Auto),
                (Some("web"), AppProtocol::Http),
                (Some("web-upper"), AppProtocol::Http),
                (Some("grpc"), AppProtocol::Http2),
                (Some("h2c"), AppProtocol::Http2),
                (Some("tls"), AppProtocol::Tcp),
                (Some("custom"), AppProtocol::Auto),
            ]
        );
    }
}

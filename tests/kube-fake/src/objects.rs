//! Builders of the Kubernetes objects laneway's tests put into the API
//! stand-in: namespaces with the enrolment label, running pods with a tag
//! label, ClusterIP Services and their EndpointSlices.

use std::collections::BTreeMap;

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

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

/// A namespace, enrolled (`laneway.io/enabled=true`) or not.
pub fn namespace(name: &str, enabled: bool) -> Namespace {
    let labels: &[(&str, &str)] = if enabled {
        &[("laneway.io/enabled", "true")]
    } else {
        &[]
    };
    Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

/// A stable UID per pod name (tests also name the pod's cgroup with it).
pub fn pod_uid(name: &str) -> String {
    let sum: u32 = name.bytes().map(u32::from).sum();
    format!("{sum:08x}-0000-4000-8000-{:012x}", name.len())
}

/// A running pod on `node` with IP `ip` and, optionally, tag label
/// `laneway.io/tag`; its UID is [`pod_uid`].
pub fn pod(namespace: &str, name: &str, node: &str, ip: &str, tag: Option<&str>) -> Pod {
    let labels: Vec<(&str, &str)> = tag.map(|t| ("laneway.io/tag", t)).into_iter().collect();
    let mut metadata = meta(Some(namespace), name, &labels);
    metadata.uid = Some(pod_uid(name));
    Pod {
        metadata,
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

/// A ClusterIP Service with one TCP port per `(name, port, target_port)`.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, i32, i32)],
) -> Service {
    Service {
        metadata: meta(Some(namespace), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, port, target)| ServicePort {
                        name: Some(port_name.to_string()),
                        port: *port,
                        target_port: Some(IntOrString::Int(*target)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// EndpointSlice `name` of Service `service`, with one port
/// `(port name, port)` and endpoints `(pod name, ip, terminating)`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: (&str, i32),
    endpoints: &[(&str, &str, bool)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some(namespace),
            name,
            &[("kubernetes.io/service-name", service)],
        ),
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(pod, ip, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(!terminating),
                        serving: Some(true),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        namespace: Some(namespace.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

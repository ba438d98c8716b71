//! Helpers shared by the integration tests: object builders, a kube client
//! for the fake server, waiting for a condition.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use laneway_kube_fake::FakeApiServer;

/// A kube client for the server (plain http, no auth).
pub fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("server url"));
    kube::Client::try_from(config).expect("kube client")
}

fn labels(labels: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    })
}

pub fn namespace(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(l),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn pod(ns: &str, name: &str, l: &[(&str, &str)], node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(l),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(ns: &str, name: &str, l: &[(&str, &str)], cluster_ip: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(l),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn endpoint_slice(ns: &str, name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(&[("kubernetes.io/service-name", service)]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).to_string()],
                    ..Default::default()
                })
                .collect(),
        ),
        ports: None,
    }
}

/// Polls `cond` every 50 ms until it holds; panics after `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut`, failing the test after `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// `namespace/name` of an object.
pub fn key<K: kube::ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The LIST (not watch) requests for a path prefix.
pub fn lists(server: &FakeApiServer, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| {
            r.strip_prefix("GET ").is_some_and(|p| {
                (p == path || p.starts_with(&format!("{path}?"))) && !p.contains("watch=true")
            })
        })
        .count()
}

/// The watch requests for a path prefix.
pub fn watches(server: &FakeApiServer, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| {
            r.strip_prefix("GET ")
                .is_some_and(|p| p.starts_with(&format!("{path}?")) && p.contains("watch=true"))
        })
        .count()
}

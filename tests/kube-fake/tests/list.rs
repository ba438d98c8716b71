//! `Api::list` and `Api::get` from the real kube-rs client against the fake
//! server: selectors, namespacing, pagination, error Statuses, kubeconfig.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ResourceExt};
use laneway_kube_fake::FakeApiServer;

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(key).collect()
}

fn seed(server: &FakeApiServer) {
    server.apply(namespace("ns1", &[("team", "a")]));
    server.apply(namespace("ns2", &[]));
    server.apply(pod(
        "ns1",
        "web-1",
        &[("app", "web"), ("tier", "front")],
        "node-a",
    ));
    server.apply(pod(
        "ns1",
        "web-2",
        &[("app", "web"), ("tier", "front")],
        "node-b",
    ));
    server.apply(pod("ns1", "db-1", &[("app", "db")], "node-a"));
    server.apply(pod("ns2", "web-3", &[("app", "web")], "node-a"));
    server.apply(pod("ns2", "batch", &[], ""));
}

#[tokio::test]
async fn list_with_label_selectors() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let pods: Api<Pod> = Api::all(client(&server));
    let list = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default().labels(sel)).await?;
            anyhow::Ok(names(&l.items))
        }
    };
    assert_eq!(
        list("app=web").await?,
        ["ns1/web-1", "ns1/web-2", "ns2/web-3"]
    );
    assert_eq!(list("app==db").await?, ["ns1/db-1"]);
    assert_eq!(list("app!=web").await?, ["ns1/db-1", "ns2/batch"]);
    assert_eq!(
        list("app").await?,
        ["ns1/db-1", "ns1/web-1", "ns1/web-2", "ns2/web-3"]
    );
    assert_eq!(list("!app").await?, ["ns2/batch"]);
    assert_eq!(
        list("app=web,tier=front").await?,
        ["ns1/web-1", "ns1/web-2"]
    );
    assert_eq!(list("app=web,!tier").await?, ["ns2/web-3"]);
    assert_eq!(list("app in (db, nothing)").await?, ["ns1/db-1"]);
    assert_eq!(list("app notin (web),app").await?, ["ns1/db-1"]);
    assert_eq!(list("").await?.len(), 5);

    let namespaces: Api<Namespace> = Api::all(client(&server));
    let l = namespaces
        .list(&ListParams::default().labels("team=a"))
        .await?;
    assert_eq!(names(&l.items), ["/ns1"]);
    Ok(())
}

#[tokio::test]
async fn list_with_field_selectors_and_namespaces() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let c = client(&server);
    let all: Api<Pod> = Api::all(c.clone());
    let fields = |sel: &'static str| {
        let all = all.clone();
        async move {
            let l = all.list(&ListParams::default().fields(sel)).await?;
            anyhow::Ok(names(&l.items))
        }
    };
    assert_eq!(
        fields("spec.nodeName=node-a").await?,
        ["ns1/db-1", "ns1/web-1", "ns2/web-3"]
    );
    assert_eq!(fields("spec.nodeName=").await?, ["ns2/batch"]);
    assert_eq!(
        fields("spec.nodeName!=node-a,metadata.namespace=ns1").await?,
        ["ns1/web-2"]
    );
    assert_eq!(fields("metadata.name=web-3").await?, ["ns2/web-3"]);
    assert_eq!(
        fields("metadata.namespace==ns2").await?,
        ["ns2/batch", "ns2/web-3"]
    );

    // Both kinds of selector together, and a namespaced path.
    let ns1: Api<Pod> = Api::namespaced(c.clone(), "ns1");
    let l = ns1
        .list(
            &ListParams::default()
                .labels("app=web")
                .fields("spec.nodeName=node-a"),
        )
        .await?;
    assert_eq!(names(&l.items), ["ns1/web-1"]);
    let l = ns1.list(&ListParams::default()).await?;
    assert_eq!(names(&l.items), ["ns1/db-1", "ns1/web-1", "ns1/web-2"]);

    // The list's resourceVersion is the server's current one; items carry theirs.
    let l = all.list(&ListParams::default()).await?;
    assert_eq!(l.metadata.resource_version, Some(server.resource_version()));
    for p in &l.items {
        let rv: u64 = p.resource_version().expect("item rv").parse()?;
        assert!(rv > 0);
        assert!(p.uid().is_some());
        assert!(p.creation_timestamp().is_some());
    }

    // An unsupported field is a 400 Status, as on the real server.
    let err = all
        .list(&ListParams::default().fields("spec.nope=x"))
        .await
        .expect_err("unsupported field");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 400);
            assert_eq!(s.reason, "BadRequest");
            assert!(
                s.message.contains("field label not supported"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn services_and_endpointslices() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    server.apply(service("ns1", "web", &[("app", "web")], "10.96.0.10"));
    server.apply(service("ns2", "db", &[], "10.96.0.11"));
    server.apply(endpoint_slice(
        "ns1",
        "web-abc",
        "web",
        &["10.0.0.1", "10.0.0.2"],
    ));
    server.apply(endpoint_slice("ns2", "db-xyz", "db", &["10.0.0.3"]));
    let c = client(&server);

    let svcs: Api<Service> = Api::all(c.clone());
    let l = svcs.list(&ListParams::default()).await?;
    assert_eq!(names(&l.items), ["ns1/web", "ns2/db"]);
    let svc = Api::<Service>::namespaced(c.clone(), "ns1")
        .get("web")
        .await?;
    assert_eq!(
        svc.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.10")
    );

    let slices: Api<EndpointSlice> = Api::all(c.clone());
    let l = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await?;
    assert_eq!(names(&l.items), ["ns1/web-abc"]);
    assert_eq!(l.items[0].endpoints.as_ref().map(Vec::len), Some(2));
    let l = Api::<EndpointSlice>::namespaced(c.clone(), "ns2")
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&l.items), ["ns2/db-xyz"]);
    Ok(())
}

#[tokio::test]
async fn get_single_objects_and_not_found() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let c = client(&server);
    let ns = Api::<Namespace>::all(c.clone()).get("ns1").await?;
    assert_eq!(ns.name_any(), "ns1");
    let p = Api::<Pod>::namespaced(c.clone(), "ns2")
        .get("web-3")
        .await?;
    assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
    assert_eq!(p.spec.and_then(|s| s.node_name).as_deref(), Some("node-a"));

    let err = Api::<Pod>::namespaced(c.clone(), "ns1")
        .get("web-3")
        .await
        .expect_err("web-3 is in ns2");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
            assert_eq!(s.message, "pods \"web-3\" not found");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        Api::<Pod>::namespaced(c, "ns1")
            .get_opt("nope")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    for i in 0..5 {
        server.apply(pod("ns", &format!("p{i}"), &[], ""));
    }
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns");
    let first = pods.list(&ListParams::default().limit(2)).await?;
    assert_eq!(names(&first.items), ["ns/p0", "ns/p1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("continue token");

    // Changes after the first page do not show in the later pages.
    server.delete::<Pod>(Some("ns"), "p3");
    server.apply(pod("ns", "p9", &[], ""));

    let second = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    assert_eq!(names(&second.items), ["ns/p2", "ns/p3"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let token = second.metadata.continue_.clone().expect("continue token");
    let third = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    assert_eq!(names(&third.items), ["ns/p4"]);
    assert!(third.metadata.continue_.is_none());

    // A fresh list sees the new state; a token from before a compaction is 410.
    let fresh = pods.list(&ListParams::default()).await?;
    assert_eq!(
        names(&fresh.items),
        ["ns/p0", "ns/p1", "ns/p2", "ns/p4", "ns/p9"]
    );
    server.apply(pod("ns", "p10", &[], ""));
    server.expire_watches();
    let err = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect_err("continue after compaction");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("unexpected error {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn many_concurrent_clients() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        // A client each: a connection each.
        let pods: Api<Pod> = Api::all(client(&server));
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..5 {
                n += pods
                    .list(&ListParams::default().labels("app=web"))
                    .await?
                    .items
                    .len();
            }
            anyhow::Ok(n)
        }));
    }
    for t in tasks {
        assert_eq!(within(30, "concurrent lists", t).await??, 15);
    }
    assert!(server.requests().len() >= 200);
    Ok(())
}

#[tokio::test]
async fn kubeconfig_yaml_configures_a_client() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let path = std::env::temp_dir().join(format!(
        "kube-fake-{}-{}.yaml",
        std::process::id(),
        server.addr().port()
    ));
    std::fs::write(&path, server.kubeconfig_yaml())?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    std::fs::remove_file(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config)?;
    let l = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&l.items), ["/ns1", "/ns2"]);
    Ok(())
}

#[tokio::test]
async fn outage_answers_503() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    // Without kube's own retries, the 503 Status reaches the caller.
    let mut config = kube::Config::new(server.url().parse()?);
    config.default_retry = false;
    let pods: Api<Pod> = Api::all(kube::Client::try_from(config)?);
    server.set_down(true);
    let err = within(10, "list during outage", pods.list(&ListParams::default()))
        .await
        .expect_err("down");
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable")),
        other => panic!("unexpected error {other:?}"),
    }
    server.set_down(false);
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 5);
    Ok(())
}

#[tokio::test]
async fn list_during_outage_is_retried_by_kube_and_succeeds_after_it() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let pods: Api<Pod> = Api::all(client(&server));
    server.set_down(true);
    let list = tokio::spawn(async move { pods.list(&ListParams::default()).await });
    eventually(10, "retries", || lists(&server, "/api/v1/pods") >= 2).await;
    server.apply(pod("ns3", "late", &[], ""));
    server.set_down(false);
    let l = within(30, "list after outage", list).await??;
    assert_eq!(l.items.len(), 6);
    Ok(())
}

#[tokio::test]
async fn outage_closing_connections_fails_requests_at_once() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    seed(&server);
    let pods: Api<Pod> = Api::all(client(&server));
    server.set_outage(Some(laneway_kube_fake::Outage::CloseConnections));
    let err = within(10, "list during outage", pods.list(&ListParams::default()))
        .await
        .expect_err("down");
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    server.set_outage(None);
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 5);
    Ok(())
}

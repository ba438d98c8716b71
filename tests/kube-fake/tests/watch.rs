//! `Api::watch`, `kube::runtime::watcher` and reflectors from the real kube-rs
//! client against the fake server: initial state, changes, selector
//! transitions, bookmarks, 410 re-lists, outages, streaming lists.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ResourceExt, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use laneway_kube_fake::{FakeApiServer, Outage};

/// `ns/name -> resourceVersion` of the reflector's objects.
fn reflected<K>(store: &Store<K>) -> BTreeMap<String, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .map(|o| (key(o.as_ref()), o.resource_version().unwrap_or_default()))
        .collect()
}

/// `ns/name -> resourceVersion` of the server's objects that pass `keep`.
fn expected<K>(server: &FakeApiServer, keep: impl Fn(&K) -> bool) -> BTreeMap<String, String>
where
    K: k8s_openapi::Resource + serde::de::DeserializeOwned + kube::Resource,
{
    server
        .list::<K>()
        .iter()
        .filter(|o| keep(o))
        .map(|o| (key(o), o.resource_version().unwrap_or_default()))
        .collect()
}

fn is_web(p: &Pod) -> bool {
    p.labels().get("app").map(String::as_str) == Some("web")
}

/// Runs a reflector over pods with the watcher's default backoff; returns its store.
fn run_reflector(
    server: &FakeApiServer,
    config: watcher::Config,
) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let api: Api<Pod> = Api::all(client(server));
    let stream = reflect(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (reader, task)
}

/// Drives a watcher stream in a task (the watcher only makes its next
/// request when polled), forwarding its items.
fn drive<S>(stream: S) -> tokio::sync::mpsc::UnboundedReceiver<Result<Event<Pod>, watcher::Error>>
where
    S: futures::Stream<Item = Result<Event<Pod>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(stream.for_each(move |item| {
        let _ = tx.send(item);
        async {}
    }));
    rx
}

/// The next watcher event, failing on a watcher error, with a timeout.
async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Event<Pod>, watcher::Error>>,
) -> Event<Pod> {
    match within(15, "next watcher event", rx.recv()).await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => panic!("watcher error: {e}"),
        None => panic!("watcher stream ended"),
    }
}

fn describe(ev: &Event<Pod>) -> String {
    match ev {
        Event::Init => "init".into(),
        Event::InitApply(p) => format!("init-apply {}", key(p)),
        Event::InitDone => "init-done".into(),
        Event::Apply(p) => format!("apply {}", key(p)),
        Event::Delete(p) => format!("delete {}", key(p)),
    }
}

async fn watcher_event_sequence(config: watcher::Config) {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[("app", "web")], "n1"));
    server.apply(pod("ns", "b", &[("app", "web")], "n1"));
    server.apply(pod("ns", "other", &[("app", "db")], "n1"));
    let api: Api<Pod> = Api::all(client(&server));
    let mut stream = drive(watcher(api, config.labels("app=web")));

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(describe(&next_event(&mut stream).await));
    }
    assert_eq!(
        got,
        ["init", "init-apply ns/a", "init-apply ns/b", "init-done"]
    );

    // Wait until the watch is open (after a LIST in list-watch mode).
    eventually(10, "open watch", || server.open_watches() == 1).await;
    server.apply(pod("ns", "c", &[("app", "web")], "n2"));
    assert_eq!(describe(&next_event(&mut stream).await), "apply ns/c");

    // A modification that keeps matching.
    server.apply(pod("ns", "a", &[("app", "web"), ("v", "2")], "n1"));
    match next_event(&mut stream).await {
        Event::Apply(p) => {
            assert_eq!(key(&p), "ns/a");
            assert_eq!(p.labels().get("v").map(String::as_str), Some("2"));
            assert_eq!(p.resource_version(), Some(server.resource_version()));
        }
        other => panic!("expected apply of ns/a, got {}", describe(&other)),
    }
    // A relabel that stops matching: DELETED for this selector.
    server.apply(pod("ns", "b", &[("app", "db")], "n1"));
    match next_event(&mut stream).await {
        Event::Delete(p) => {
            assert_eq!(key(&p), "ns/b");
            assert_eq!(p.resource_version(), Some(server.resource_version()));
        }
        other => panic!("expected delete of ns/b, got {}", describe(&other)),
    }
    // A relabel that starts matching: ADDED.
    server.apply(pod("ns", "other", &[("app", "web")], "n1"));
    assert_eq!(describe(&next_event(&mut stream).await), "apply ns/other");
    // A change to an object outside the selector is not seen; a delete is.
    server.apply(pod("ns", "b", &[("app", "db"), ("x", "y")], "n1"));
    assert!(server.delete::<Pod>(Some("ns"), "c"));
    match next_event(&mut stream).await {
        Event::Delete(p) => {
            assert_eq!(key(&p), "ns/c");
            assert_eq!(p.resource_version(), Some(server.resource_version()));
            assert_eq!(p.spec.and_then(|s| s.node_name).as_deref(), Some("n2"));
        }
        other => panic!("expected delete of ns/c, got {}", describe(&other)),
    }
}

#[tokio::test]
async fn watcher_sees_initial_add_modify_relabel_delete() {
    watcher_event_sequence(watcher::Config::default()).await;
}

#[tokio::test]
async fn streaming_list_watcher_sees_initial_add_modify_relabel_delete() {
    watcher_event_sequence(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn streaming_lists_use_send_initial_events_and_no_list() {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[("app", "web")], ""));
    let (store, task) = run_reflector(&server, watcher::Config::default().streaming_lists());
    eventually(10, "initial state", || {
        reflected(&store) == expected(&server, |_: &Pod| true)
    })
    .await;
    let reqs = server.requests();
    assert_eq!(lists(&server, "/api/v1/pods"), 0, "{reqs:#?}");
    assert!(
        reqs.iter().any(|r| r.contains("sendInitialEvents=true")
            && r.contains("resourceVersionMatch=NotOlderThan")),
        "{reqs:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn reflector_converges_through_changes() {
    let server = FakeApiServer::start_local();
    for i in 0..10 {
        server.apply(pod("ns", &format!("p{i}"), &[("app", "web")], ""));
    }
    let (store, task) = run_reflector(&server, watcher::Config::default().labels("app=web"));
    eventually(10, "initial state", || {
        reflected(&store) == expected(&server, is_web)
    })
    .await;
    for i in 0..10 {
        match i % 3 {
            0 => server.apply(pod("ns", &format!("p{i}"), &[("app", "db")], "")),
            1 => {
                server.delete::<Pod>(Some("ns"), &format!("p{i}"));
            }
            _ => server.apply(pod(
                "ns",
                &format!("p{i}"),
                &[("app", "web"), ("gen", "2")],
                "",
            )),
        }
        server.apply(pod("other", &format!("new{i}"), &[("app", "web")], ""));
    }
    eventually(10, "final state", || {
        reflected(&store) == expected(&server, is_web)
    })
    .await;
    assert_eq!(reflected(&store).len(), 3 + 10);
    task.abort();
}

async fn expire_forces_relist(config: watcher::Config, streaming: bool) {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[], ""));
    server.apply(pod("ns", "b", &[], ""));
    let (store, task) = run_reflector(&server, config);
    let all = |_: &Pod| true;
    eventually(10, "initial state", || {
        reflected(&store) == expected(&server, all)
    })
    .await;
    eventually(10, "open watch", || server.open_watches() == 1).await;
    let lists_before = lists(&server, "/api/v1/pods");
    let initial_watches_before = server
        .requests()
        .iter()
        .filter(|r| r.contains("sendInitialEvents=true"))
        .count();

    server.expire_watches();
    server.apply(pod("ns", "c", &[], ""));
    server.delete::<Pod>(Some("ns"), "a");
    server.apply(pod("ns", "b", &[("changed", "yes")], ""));

    eventually(15, "state after re-list", || {
        reflected(&store) == expected(&server, all)
    })
    .await;
    if streaming {
        let initial_watches_after = server
            .requests()
            .iter()
            .filter(|r| r.contains("sendInitialEvents=true"))
            .count();
        assert!(
            initial_watches_after > initial_watches_before,
            "{:#?}",
            server.requests()
        );
    } else {
        assert!(
            lists(&server, "/api/v1/pods") > lists_before,
            "{:#?}",
            server.requests()
        );
    }
    assert_eq!(
        reflected(&store).keys().cloned().collect::<Vec<_>>(),
        ["ns/b", "ns/c"]
    );
    task.abort();
}

#[tokio::test]
async fn expire_watches_forces_relist() {
    expire_forces_relist(watcher::Config::default(), false).await;
}

#[tokio::test]
async fn expire_watches_forces_streaming_relist() {
    expire_forces_relist(watcher::Config::default().streaming_lists(), true).await;
}

#[tokio::test]
async fn watch_from_compacted_version_gets_410() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[], ""));
    let old = server.resource_version();
    server.apply(pod("ns", "b", &[], ""));
    server.expire_watches();
    let api: Api<Pod> = Api::all(client(&server));
    let mut stream = api.watch(&WatchParams::default(), &old).await?.boxed();
    match within(10, "410 event", stream.try_next()).await? {
        Some(WatchEvent::Error(s)) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        within(10, "end of stream", stream.try_next())
            .await?
            .is_none()
    );

    // From the current version it is fine.
    let now = server.resource_version();
    let mut stream = api.watch(&WatchParams::default(), &now).await?.boxed();
    server.apply(pod("ns", "c", &[], ""));
    match within(10, "added event", stream.try_next()).await? {
        Some(WatchEvent::Added(p)) => assert_eq!(p.name_any(), "c"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn watch_resumes_from_resource_version() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[("app", "web")], ""));
    let from = server.resource_version();
    server.apply(pod("ns", "b", &[("app", "web")], ""));
    server.apply(pod("ns", "a", &[("app", "db")], ""));
    server.delete::<Pod>(Some("ns"), "b");
    server.apply(pod("ns", "a", &[("app", "web")], ""));
    let api: Api<Pod> = Api::all(client(&server));
    let stream = api
        .watch(&WatchParams::default().labels("app=web").timeout(2), &from)
        .await?;
    let events: Vec<String> = within(10, "watch until timeout", stream.try_collect::<Vec<_>>())
        .await?
        .into_iter()
        .filter_map(|e| match e {
            WatchEvent::Added(p) => {
                Some(format!("ADDED {} {}", p.name_any(), p.resource_version()?))
            }
            WatchEvent::Modified(p) => Some(format!(
                "MODIFIED {} {}",
                p.name_any(),
                p.resource_version()?
            )),
            WatchEvent::Deleted(p) => Some(format!(
                "DELETED {} {}",
                p.name_any(),
                p.resource_version()?
            )),
            WatchEvent::Bookmark(_) => None,
            WatchEvent::Error(e) => Some(format!("ERROR {e:?}")),
        })
        .collect();
    let base: u64 = from.parse()?;
    let rv = |d: u64| base + d;
    assert_eq!(
        events,
        [
            format!("ADDED b {}", rv(1)),
            format!("DELETED a {}", rv(2)),
            format!("DELETED b {}", rv(3)),
            format!("ADDED a {}", rv(4)),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn bookmarks_arrive_and_advance() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[], ""));
    let api: Api<Pod> = Api::all(client(&server));
    let start = server.resource_version();
    let mut stream = api
        .watch(&WatchParams::default().labels("app=nothing"), &start)
        .await?
        .boxed();
    match within(5, "first bookmark", stream.try_next()).await? {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(b.metadata.resource_version, start);
            assert_eq!(b.types.kind, "Pod");
            assert_eq!(b.types.api_version, "v1");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Changes that the selector hides still move bookmarks forward.
    server.apply(pod("ns", "b", &[], ""));
    server.apply(pod("ns", "c", &[], ""));
    let latest = server.resource_version();
    let mut seen = Vec::new();
    while seen.last() != Some(&latest) {
        match within(5, "a bookmark at the latest version", stream.try_next()).await? {
            Some(WatchEvent::Bookmark(b)) => seen.push(b.metadata.resource_version),
            other => panic!("expected a bookmark, got {other:?} after {seen:?}"),
        }
        assert!(
            seen.len() < 4,
            "bookmarks do not advance: {seen:?}, latest {latest}"
        );
    }

    // Without allowWatchBookmarks there are none.
    let mut quiet = api
        .watch(&WatchParams::default().disable_bookmarks(), &latest)
        .await?
        .boxed();
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), quiet.try_next())
            .await
            .is_err(),
        "an event arrived on an idle watch without bookmarks"
    );
    Ok(())
}

#[tokio::test]
async fn chunked_watch_stream_parses_without_errors_and_times_out_cleanly() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local();
    for i in 0..50 {
        server.apply(pod(
            "ns",
            &format!("p{i}"),
            &[("i", &i.to_string())],
            "node",
        ));
    }
    let api: Api<Pod> = Api::all(client(&server));
    let start = std::time::Instant::now();
    let stream = api.watch(&WatchParams::default().timeout(2), "0").await?;
    let events: Vec<_> = within(10, "watch to end", stream.collect::<Vec<_>>()).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "ended early: {elapsed:?}"
    );
    let mut added = 0;
    for ev in events {
        match ev {
            Ok(WatchEvent::Added(_)) => added += 1,
            Ok(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected item {other:?}"),
        }
    }
    assert_eq!(added, 50);
    // The connection is reused after the stream ends (keep-alive).
    assert_eq!(api.list(&ListParams::default()).await?.items.len(), 50);
    Ok(())
}

#[tokio::test]
async fn outage_then_recovery_converges() {
    outage_then_recovery(Outage::ServiceUnavailable).await;
}

#[tokio::test]
async fn crash_outage_then_recovery_converges() {
    outage_then_recovery(Outage::CloseConnections).await;
}

async fn outage_then_recovery(outage: Outage) {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "keep", &[], ""));
    server.apply(pod("ns", "gone", &[], ""));
    let (store, task) = run_reflector(&server, watcher::Config::default());
    let all = |_: &Pod| true;
    eventually(10, "initial state", || {
        reflected(&store) == expected(&server, all)
    })
    .await;
    eventually(10, "open watch", || server.open_watches() == 1).await;

    server.set_outage(Some(outage));
    assert_eq!(server.open_watches(), 0);
    let before = server.requests().len();
    server.delete::<Pod>(Some("ns"), "gone");
    server.apply(pod("ns", "new", &[], ""));
    server.apply(pod("ns", "keep", &[("v", "2")], ""));
    // The client keeps trying (and gets 503s) while the server is down.
    eventually(15, "retries during the outage", || {
        server.requests().len() >= before + 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(
        reflected(&store),
        expected(&server, all),
        "changed while down?"
    );
    server.set_outage(None);

    eventually(40, "state after the outage", || {
        reflected(&store) == expected(&server, all)
    })
    .await;
    assert_eq!(
        reflected(&store).keys().cloned().collect::<Vec<_>>(),
        ["ns/keep", "ns/new"]
    );
    task.abort();
}

#[tokio::test]
async fn endpointslice_watcher_by_service_label() {
    let server = FakeApiServer::start_local();
    server.apply(endpoint_slice("ns", "web-1", "web", &["10.0.0.1"]));
    server.apply(endpoint_slice("ns", "db-1", "db", &["10.0.0.9"]));
    let (reader, writer) = reflector::store::<EndpointSlice>();
    let api: Api<EndpointSlice> = Api::namespaced(client(&server), "ns");
    let cfg = watcher::Config::default().labels("kubernetes.io/service-name=web");
    let task = tokio::spawn(
        reflect(writer, watcher(api, cfg))
            .default_backoff()
            .for_each(|_| async {}),
    );
    let web = |s: &EndpointSlice| {
        s.labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str)
            == Some("web")
    };
    eventually(10, "initial slices", || {
        reflected(&reader) == expected(&server, web)
    })
    .await;
    server.apply(endpoint_slice(
        "ns",
        "web-1",
        "web",
        &["10.0.0.1", "10.0.0.2"],
    ));
    server.apply(endpoint_slice("ns", "web-2", "web", &["10.0.0.3"]));
    eventually(10, "updated slices", || {
        reflected(&reader) == expected(&server, web)
    })
    .await;
    let slice = reader
        .state()
        .into_iter()
        .find(|s| s.name_any() == "web-1")
        .expect("web-1");
    assert_eq!(slice.endpoints.as_ref().map(Vec::len), Some(2));
    task.abort();
}

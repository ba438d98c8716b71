//! A stand-in for the Kubernetes API server, **for tests only**.
//!
//! [`FakeApiServer`] serves the real Kubernetes list/watch wire protocol over
//! plain HTTP/1.1 (keep-alive, chunked watch streams) from an in-memory store
//! of k8s-openapi objects, so that the real kube-rs client — `Api::list`,
//! `Api::watch`, `kube::runtime::watcher` and reflectors — can be tested
//! against it. It is not an API server: it has no authentication, no
//! admission, no validation of object contents, and it only serves reads
//! (GET of lists, single objects and watches); tests change objects through
//! [`FakeApiServer::apply`] and [`FakeApiServer::delete`].
//!
//! What it does as the real API server does:
//!
//! * paths `/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}`,
//!   `/apis/{group}/{version}/...` and `.../{name}`; an unknown path is a
//!   404 `Status`. Namespaces, Pods, Services and EndpointSlices are served
//!   from the start; other kinds once [`FakeApiServer::register`]ed or applied;
//! * one global, increasing `resourceVersion`; lists carry it in
//!   `metadata.resourceVersion` and omit `apiVersion`/`kind` on items;
//!   `limit`/`continue` paginate over a consistent snapshot;
//! * `labelSelector` (every form: `=`, `==`, `!=`, `in`, `notin`, exists,
//!   `!`, `>`/`<`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, `spec.nodeName` and the other fields the real
//!   server supports for pods and namespaces);
//! * watches (`watch=true`): one JSON `WatchEvent` per line in a chunked
//!   body; resumption from any `resourceVersion` still in the history; a
//!   synthetic ADDED per object when starting from `""`/`"0"`; streaming
//!   lists (`sendInitialEvents=true`, ending with the
//!   `k8s.io/initial-events-end` BOOKMARK); BOOKMARK events about every
//!   second while idle with `allowWatchBookmarks=true`; `timeoutSeconds`;
//!   DELETED/ADDED when a change makes an object leave/enter a selector;
//! * `410 Expired` ERROR events after a simulated compaction
//!   ([`FakeApiServer::expire_watches`]), and 503 during a simulated outage
//!   ([`FakeApiServer::set_down`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k8s_openapi::api::core::v1::Namespace;
//! use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
//! use laneway_kube_fake::FakeApiServer;
//!
//! let server = FakeApiServer::start_local();
//! server.apply(Namespace {
//!     metadata: ObjectMeta { name: Some("demo".into()), ..Default::default() },
//!     ..Default::default()
//! });
//! let client = kube::Client::try_from(kube::Config::new(server.url().parse()?))?;
//! let namespaces: kube::Api<Namespace> = kube::Api::all(client);
//! assert_eq!(namespaces.list(&Default::default()).await?.items.len(), 1);
//! # Ok(())
//! # }
//! ```

mod http;
pub mod objects;
mod selector;
mod status;
mod store;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::store::{Shared, TypeInfo, lock};

/// Why the fake API server could not do something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up the listener failed.
    #[error("fake API server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An object could not be turned into JSON (or back).
    #[error("fake API server (de)serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// An applied object lacks something the server needs (a name).
    #[error("fake API server: invalid object: {0}")]
    InvalidObject(String),
}

/// How a simulated outage refuses requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Answer `503 ServiceUnavailable` with a Status body and
    /// `Retry-After: 1` (an API server behind a load balancer with no
    /// healthy backend, or one shutting down).
    ServiceUnavailable,
    /// Read the request, then close the connection without an answer (a
    /// crashed server): the client gets a transport error, which kube does
    /// not retry by itself.
    CloseConnections,
}

/// A fake Kubernetes API server listening on a TCP socket, serving from its
/// in-memory store on the tokio runtime it was started on.
///
/// Dropping it stops the server and ends every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Serves on an already-bound listener (which may have been created
    /// inside another network namespace). Spawns onto the current tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if the listener cannot be used (see
    /// [`FakeApiServer::try_start`] for the fallible form).
    pub fn start(listener: std::net::TcpListener) -> Self {
        match Self::try_start(listener) {
            Ok(server) => server,
            Err(e) => panic!("cannot start the fake API server: {e}"),
        }
    }

    /// Like [`FakeApiServer::start`], returning listener errors.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn try_start(listener: std::net::TcpListener) -> Result<Self, Error> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared::new(addr));
        {
            use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
            use k8s_openapi::api::discovery::v1::EndpointSlice;
            let mut store = lock(&shared.store);
            store.register(TypeInfo::of::<Namespace>());
            store.register(TypeInfo::of::<Pod>());
            store.register(TypeInfo::of::<Service>());
            store.register(TypeInfo::of::<EndpointSlice>());
        }
        let task = tokio::spawn(http::serve(listener, Arc::clone(&shared)));
        Ok(Self { shared, addr, task })
    }

    /// Binds `127.0.0.1:0` and starts.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if binding fails.
    pub fn start_local() -> Self {
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => Self::start(listener),
            Err(e) => panic!("cannot bind the fake API server to 127.0.0.1:0: {e}"),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT` (an unspecified listen
    /// address is given as loopback).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            _ => {}
        }
        format!("http://{addr}")
    }

    /// A kubeconfig (YAML) for this server: plain http, no authentication,
    /// default namespace `default`. Write it to a file for a separate process.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: laneway-kube-fake\n  \
               cluster:\n    \
                 server: {url}\n\
             contexts:\n\
             - name: laneway-kube-fake\n  \
               context:\n    \
                 cluster: laneway-kube-fake\n    \
                 user: laneway-kube-fake\n    \
                 namespace: default\n\
             current-context: laneway-kube-fake\n\
             users:\n\
             - name: laneway-kube-fake\n  \
               user: {{}}\n\
             preferences: {{}}\n",
            url = self.url()
        )
    }

    /// Serves kind `K` (an empty collection until objects are applied).
    /// Namespaces, Pods, Services and EndpointSlices are always served.
    pub fn register<K: k8s_openapi::Resource>(&self) {
        lock(&self.shared.store).register(TypeInfo::of::<K>());
    }

    /// Creates or replaces an object: assigns `metadata.resourceVersion` (the
    /// next value of one global counter), `metadata.uid` and
    /// `metadata.creationTimestamp` if missing (kept from the replaced object
    /// if it had them), `metadata.namespace` `default` for a namespaced kind
    /// without one, and a name from `metadata.generateName`; emits ADDED or
    /// MODIFIED to the matching watches.
    ///
    /// # Panics
    ///
    /// If the object has neither `metadata.name` nor
    /// `metadata.generateName` (see [`FakeApiServer::try_apply`]).
    pub fn apply<K>(&self, obj: K)
    where
        K: k8s_openapi::Resource
            + k8s_openapi::Metadata<Ty = ObjectMeta>
            + serde::Serialize
            + Clone,
    {
        if let Err(e) = self.try_apply(obj) {
            panic!("{e}");
        }
    }

    /// Like [`FakeApiServer::apply`]; returns the new resourceVersion.
    pub fn try_apply<K>(&self, obj: K) -> Result<String, Error>
    where
        K: k8s_openapi::Resource
            + k8s_openapi::Metadata<Ty = ObjectMeta>
            + serde::Serialize
            + Clone,
    {
        let value = serde_json::to_value(&obj)?;
        let mut store = lock(&self.shared.store);
        let ty = store.register(TypeInfo::of::<K>());
        store.apply(ty, value).map(|rv| rv.to_string())
    }

    /// Deletes an object by namespace (`None` for a cluster-scoped kind) and
    /// name; emits DELETED with its last state and a new resourceVersion.
    /// Returns whether it existed. (Deleting a Namespace does not delete its
    /// contents.)
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        let mut store = lock(&self.shared.store);
        let Some(ty) = store.find_info(&TypeInfo::of::<K>()) else {
            return false;
        };
        store.delete(ty, namespace.unwrap_or_default(), name)
    }

    /// The current state of one object, as a client would get it.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let store = lock(&self.shared.store);
        let ty = store.find_info(&TypeInfo::of::<K>())?;
        let obj = store.get(ty, namespace.unwrap_or_default(), name)?;
        drop(store);
        serde_json::from_value(serde_json::Value::clone(&obj)).ok()
    }

    /// Every object of kind `K`, in all namespaces, ordered by namespace and name.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let store = lock(&self.shared.store);
        let Some(ty) = store.find_info(&TypeInfo::of::<K>()) else {
            return Vec::new();
        };
        let filter = store::Filter {
            ty,
            namespace: None,
            name: None,
            labels: selector::LabelSelector::default(),
            fields: selector::FieldSelector::default(),
        };
        let Ok(snapshot) = store.list(&filter, None) else {
            return Vec::new();
        };
        drop(store);
        snapshot
            .items
            .into_iter()
            .filter_map(|(_, obj)| serde_json::from_value(serde_json::Value::clone(&obj)).ok())
            .collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> String {
        lock(&self.shared.store).resource_version().to_string()
    }

    /// Simulates etcd compaction: every open watch gets an ERROR event with a
    /// `410 Expired` Status and is closed; later watches (and exact or
    /// continued lists) from a resourceVersion older than now get the same.
    pub fn expire_watches(&self) {
        lock(&self.shared.store).expire();
    }

    /// Outage on or off. While down, every request is answered
    /// `503 ServiceUnavailable` (with `Retry-After: 1`), and the open watches
    /// are ended when going down. Objects can still be changed with apply and
    /// delete meanwhile.
    ///
    /// Note that kube 5's client retries 503 answers by itself (up to 15
    /// times, with exponential backoff and honouring `Retry-After`), so a
    /// request made during a short outage often just succeeds late; use
    /// [`Outage::CloseConnections`] to make failures reach the caller at once.
    pub fn set_down(&self, down: bool) {
        self.set_outage(down.then_some(Outage::ServiceUnavailable));
    }

    /// Starts (`Some`) or ends (`None`) an outage of the given kind. Starting
    /// one ends every open watch.
    pub fn set_outage(&self, outage: Option<Outage>) {
        let mut store = lock(&self.shared.store);
        store.outage = outage;
        if outage.is_some() {
            store.close_all();
        }
    }

    /// Whether an outage is simulated.
    pub fn is_down(&self) -> bool {
        lock(&self.shared.store).outage.is_some()
    }

    /// The number of watches open now.
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.store).open_watches()
    }

    /// Every request seen so far, as `METHOD /path?query` (query as sent).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

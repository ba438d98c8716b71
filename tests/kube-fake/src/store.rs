//! The in-memory object store: objects of every registered kind, the global
//! resourceVersion counter, the change history that watches resume from, and
//! the open watches that changes are fanned out to.
//!
//! Everything here runs under one mutex ([`Shared::store`]): a change is
//! stored, recorded in the history and queued to every open watch in one
//! critical section, so a watch that starts (snapshot or history replay plus
//! registration, also under the lock) can neither miss nor repeat a change.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::Error;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status;

/// At most this many changes are kept; older ones are compacted away as if
/// by etcd (watches from before them get `410 Expired`).
const MAX_HISTORY: usize = 100_000;

/// The annotation on the BOOKMARK that ends the initial events of a streaming list.
pub(crate) const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What the API server knows about one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeInfo {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group (`v1`).
    pub version: String,
    /// `apiVersion` of objects: `v1` or `group/version`.
    pub api_version: String,
    /// `kind` of objects (`Pod`).
    pub kind: String,
    /// The plural resource name used in URLs (`pods`).
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl TypeInfo {
    /// The type information of a k8s-openapi resource type.
    pub(crate) fn of<K: k8s_openapi::Resource>() -> Self {
        // `ResourceScope` carries no value to read, so compare the scope type
        // itself (the names of two types within one binary are the same
        // exactly when the types are).
        let namespaced = std::any::type_name::<K::Scope>()
            == std::any::type_name::<k8s_openapi::NamespaceResourceScope>();
        Self {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            api_version: K::API_VERSION.to_string(),
            kind: K::KIND.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            namespaced,
        }
    }
}

/// The identity of an object within its type: (namespace or "", name).
/// Ordered as the real server orders list results (by etcd key).
pub(crate) type Key = (String, String);

/// One change, as kept in the history.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    ty: usize,
    key: Key,
    /// The object before the change (`None` for a creation).
    prev: Option<Arc<Value>>,
    /// The object after the change (`None` for a deletion).
    cur: Option<Arc<Value>>,
}

/// Which objects a list or watch selects.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// Index of the type in the store.
    pub ty: usize,
    /// Namespace from the request path.
    pub namespace: Option<String>,
    /// Object name from the request path (watch of a single object).
    pub name: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether the object passes every part of the filter.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let meta = obj.get("metadata");
        let meta_str = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
        if let Some(ns) = &self.namespace
            && meta_str("namespace") != Some(ns.as_str())
        {
            return false;
        }
        if let Some(name) = &self.name
            && meta_str("name") != Some(name.as_str())
        {
            return false;
        }
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.labels.matches(labels) && self.fields.matches(obj)
    }
}

/// A message to an open watch stream.
#[derive(Debug)]
pub(crate) enum WatchMsg {
    /// One watch event line (JSON and a newline) to send.
    Line(Bytes),
    /// Send this (410 ERROR) line, then end the stream.
    Expired(Bytes),
    /// End the stream now.
    Close,
}

struct Subscriber {
    id: u64,
    filter: Arc<Filter>,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// `resourceVersion` unset or "0": synthetic ADDED events for the current state first.
    Current,
    /// `sendInitialEvents=true`: ADDED events for the current state, then a
    /// BOOKMARK annotated as the end of the initial events.
    InitialEvents,
    /// Every change after this resourceVersion.
    After(u64),
}

/// A watch that was set up.
pub(crate) struct WatchStart {
    /// Subscriber id, for [`Store::unsubscribe`].
    pub id: u64,
    /// Lines to send before anything from `rx`.
    pub initial: VecDeque<Bytes>,
    /// Later events.
    pub rx: mpsc::UnboundedReceiver<WatchMsg>,
    /// A sender into the same queue (for bookmarks, queued under the lock).
    pub tx: mpsc::UnboundedSender<WatchMsg>,
}

/// The result of asking for a watch.
pub(crate) enum WatchOutcome {
    /// The watch is open.
    Started(WatchStart),
    /// The requested resourceVersion was compacted: send this ERROR line and end.
    Expired(Bytes),
}

/// The list of objects at one resourceVersion.
pub(crate) struct Snapshot {
    /// The resourceVersion the list is consistent at.
    pub rv: u64,
    /// The matching objects in key order.
    pub items: Vec<(Key, Arc<Value>)>,
}

/// The objects, the history and the open watches.
pub(crate) struct Store {
    types: Vec<TypeInfo>,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    rv: u64,
    history: VecDeque<Change>,
    /// Watches and exact lists from a resourceVersion below this one get 410.
    compacted: u64,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    name_counter: u64,
    /// Outage simulation: how requests are refused, if they are.
    pub outage: Option<crate::Outage>,
}

/// The state shared between the server's handle and its connections.
pub(crate) struct Shared {
    /// Objects, history, watches.
    pub store: Mutex<Store>,
    /// Every request line seen (`GET /path?query`).
    pub requests: Mutex<Vec<String>>,
    /// The address the server listens on.
    pub addr: SocketAddr,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not take
/// the fake server down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            addr,
        }
    }
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh UID in the UUID text form (unique within the process).
fn new_uid() -> String {
    let n = UID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
        0xfa4e_0000u64 | (pid & 0xffff),
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// The current time as an RFC 3339 timestamp in UTC, to the second
/// (the form of `metadata.creationTimestamp`).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format_rfc3339(secs)
}

fn format_rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// `{"type":..,"object":..}` and a newline.
fn event_line(kind: &str, obj: &Value) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{obj}}}\n"))
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
    }
}

/// The watch event a change means to a watch with this filter, as the real
/// API server's watch cache computes it: an object that starts matching is
/// ADDED, one that stops matching is DELETED (its previous state with the new
/// resourceVersion), one that matches before and after is MODIFIED.
fn event_for(change: &Change, filter: &Filter) -> Option<Bytes> {
    if change.ty != filter.ty {
        return None;
    }
    let cur_passes = change.cur.as_deref().is_some_and(|c| filter.matches(c));
    let prev_passes = change.prev.as_deref().is_some_and(|p| filter.matches(p));
    match (cur_passes, prev_passes, &change.cur, &change.prev) {
        (true, false, Some(cur), _) => Some(event_line("ADDED", cur)),
        (true, true, Some(cur), _) => Some(event_line("MODIFIED", cur)),
        (false, true, _, Some(prev)) => {
            let mut obj = Value::clone(prev);
            set_rv(&mut obj, change.rv);
            Some(event_line("DELETED", &obj))
        }
        _ => None,
    }
}

/// The metav1.Status of a compacted watch.
fn expired_status(requested: u64, compacted: u64) -> Value {
    status::failure(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({compacted})"),
        None,
    )
}

/// Random-looking suffix characters used by `generateName` (as the real server).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Store {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            objects: Vec::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 0,
            subscribers: Vec::new(),
            next_subscriber: 1,
            name_counter: 0,
            outage: None,
        }
    }

    /// Registers a type (idempotent) and returns its index.
    pub(crate) fn register(&mut self, info: TypeInfo) -> usize {
        if let Some(i) = self.types.iter().position(|t| {
            t.group == info.group && t.version == info.version && t.plural == info.plural
        }) {
            return i;
        }
        self.types.push(info);
        self.objects.push(BTreeMap::new());
        self.types.len() - 1
    }

    /// The index of the type served at this group/version/plural.
    pub(crate) fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The index of an already registered type.
    pub(crate) fn find_info(&self, info: &TypeInfo) -> Option<usize> {
        self.find_type(&info.group, &info.version, &info.plural)
    }

    /// Information about a registered type.
    pub(crate) fn type_info(&self, ty: usize) -> Option<&TypeInfo> {
        self.types.get(ty)
    }

    /// All registered types.
    pub(crate) fn types(&self) -> &[TypeInfo] {
        &self.types
    }

    /// The current (latest) resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The number of open watches.
    pub(crate) fn open_watches(&self) -> usize {
        self.subscribers.len()
    }

    fn generated_name(&mut self, prefix: &str) -> String {
        self.name_counter += 1;
        let mut n = self.name_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
        let mut suffix = String::new();
        for _ in 0..5 {
            let i = usize::try_from(n % NAME_ALPHABET.len() as u64).unwrap_or_default();
            suffix.push(char::from(NAME_ALPHABET[i]));
            n /= NAME_ALPHABET.len() as u64;
        }
        format!("{prefix}{suffix}")
    }

    /// Creates or replaces an object (its JSON form, with apiVersion and kind):
    /// assigns the resourceVersion, and uid and creationTimestamp if missing.
    /// Returns the new resourceVersion.
    pub(crate) fn apply(&mut self, ty: usize, mut obj: Value) -> Result<u64, Error> {
        let info = self
            .types
            .get(ty)
            .cloned()
            .ok_or_else(|| Error::InvalidObject("unknown type".to_string()))?;
        let Some(root) = obj.as_object_mut() else {
            return Err(Error::InvalidObject(
                "object does not serialize to a JSON object".to_string(),
            ));
        };
        root.insert(
            "apiVersion".to_string(),
            Value::String(info.api_version.clone()),
        );
        root.insert("kind".to_string(), Value::String(info.kind.clone()));
        let meta_value = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta_value.is_object() {
            *meta_value = Value::Object(Map::new());
        }
        let generate = |meta: &Value, f: &str| {
            meta.get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut name = generate(meta_value, "name");
        if name.is_none()
            && let Some(prefix) = generate(meta_value, "generateName")
        {
            name = Some(self.generated_name(&prefix));
        }
        let Some(name) = name else {
            return Err(Error::InvalidObject(format!(
                "{} without metadata.name or metadata.generateName",
                info.kind
            )));
        };
        let namespace = if info.namespaced {
            generate(meta_value, "namespace").unwrap_or_else(|| "default".to_string())
        } else {
            String::new()
        };
        let key: Key = (namespace.clone(), name.clone());
        let prev = self.objects[ty].get(&key).cloned();
        let prev_meta = prev.as_deref().and_then(|p| p.get("metadata"));
        let prev_str = |f: &str| {
            prev_meta
                .and_then(|m| m.get(f))
                .filter(|v| !v.is_null())
                .cloned()
        };

        self.rv += 1;
        let rv = self.rv;
        let Some(meta) = meta_value.as_object_mut() else {
            return Err(Error::InvalidObject(
                "metadata is not an object".to_string(),
            ));
        };
        meta.insert("name".to_string(), Value::String(name));
        if info.namespaced {
            meta.insert("namespace".to_string(), Value::String(namespace));
        } else {
            meta.remove("namespace");
        }
        let missing = |m: &Map<String, Value>, f: &str| {
            m.get(f)
                .is_none_or(|v| v.is_null() || v.as_str().is_some_and(str::is_empty))
        };
        if missing(meta, "uid") {
            let uid = prev_str("uid").unwrap_or_else(|| Value::String(new_uid()));
            meta.insert("uid".to_string(), uid);
        }
        if missing(meta, "creationTimestamp") {
            let ts = prev_str("creationTimestamp").unwrap_or_else(|| Value::String(now_rfc3339()));
            meta.insert("creationTimestamp".to_string(), ts);
        }
        meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));

        let cur = Arc::new(obj);
        self.objects[ty].insert(key.clone(), Arc::clone(&cur));
        self.record(Change {
            rv,
            ty,
            key,
            prev,
            cur: Some(cur),
        });
        Ok(rv)
    }

    /// Deletes an object; returns whether it existed.
    pub(crate) fn delete(&mut self, ty: usize, namespace: &str, name: &str) -> bool {
        let Some(objects) = self.objects.get_mut(ty) else {
            return false;
        };
        let key: Key = (namespace.to_string(), name.to_string());
        let Some(prev) = objects.remove(&key) else {
            return false;
        };
        self.rv += 1;
        let rv = self.rv;
        self.record(Change {
            rv,
            ty,
            key,
            prev: Some(prev),
            cur: None,
        });
        true
    }

    /// Keeps a change in the history and queues it to every open watch.
    fn record(&mut self, change: Change) {
        self.subscribers
            .retain(|s| match event_for(&change, &s.filter) {
                Some(line) => s.tx.send(WatchMsg::Line(line)).is_ok(),
                None => !s.tx.is_closed(),
            });
        self.history.push_back(change);
        while self.history.len() > MAX_HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = self.compacted.max(old.rv);
            }
        }
    }

    /// One object by key.
    pub(crate) fn get(&self, ty: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(ty)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The objects that match, at `at` (an older resourceVersion, rebuilt by
    /// undoing later changes) or now. `Err` carries the 410 Status when `at`
    /// was compacted.
    pub(crate) fn list(&self, filter: &Filter, at: Option<u64>) -> Result<Snapshot, Value> {
        let Some(current) = self.objects.get(filter.ty) else {
            return Ok(Snapshot {
                rv: self.rv,
                items: Vec::new(),
            });
        };
        let (rv, objects) = match at {
            Some(at) if at < self.rv => {
                if at < self.compacted {
                    return Err(expired_status(at, self.compacted));
                }
                let mut objects = current.clone();
                for change in self.history.iter().rev() {
                    if change.rv <= at {
                        break;
                    }
                    if change.ty != filter.ty {
                        continue;
                    }
                    match &change.prev {
                        Some(prev) => objects.insert(change.key.clone(), Arc::clone(prev)),
                        None => objects.remove(&change.key),
                    };
                }
                (at, objects)
            }
            _ => (self.rv, current.clone()),
        };
        let items = objects
            .into_iter()
            .filter(|(_, obj)| filter.matches(obj))
            .collect();
        Ok(Snapshot { rv, items })
    }

    /// A BOOKMARK event line for a type at the current resourceVersion.
    pub(crate) fn bookmark_line(&self, ty: usize, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = self
            .types
            .get(ty)
            .map(|t| (t.kind.as_str(), t.api_version.as_str()))
            .unwrap_or_default();
        let mut meta = json!({ "resourceVersion": self.rv.to_string() });
        if initial_events_end {
            meta["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
        }
        let obj = json!({ "kind": kind, "apiVersion": api_version, "metadata": meta });
        event_line("BOOKMARK", &obj)
    }

    /// Opens a watch: computes what it must see first and registers it for
    /// later changes, atomically.
    pub(crate) fn watch(&mut self, filter: Filter, from: WatchFrom) -> WatchOutcome {
        let mut initial = VecDeque::new();
        match from {
            WatchFrom::Current | WatchFrom::InitialEvents => {
                if let Some(objects) = self.objects.get(filter.ty) {
                    initial.extend(
                        objects
                            .values()
                            .filter(|o| filter.matches(o))
                            .map(|o| event_line("ADDED", o)),
                    );
                }
                if from == WatchFrom::InitialEvents {
                    initial.push_back(self.bookmark_line(filter.ty, true));
                }
            }
            WatchFrom::After(rv) => {
                if rv < self.compacted {
                    let status = expired_status(rv, self.compacted);
                    return WatchOutcome::Expired(event_line("ERROR", &status));
                }
                initial.extend(
                    self.history
                        .iter()
                        .filter(|c| c.rv > rv)
                        .filter_map(|c| event_for(c, &filter)),
                );
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        self.subscribers.push(Subscriber {
            id,
            filter: Arc::new(filter),
            tx: tx.clone(),
        });
        WatchOutcome::Started(WatchStart {
            id,
            initial,
            rx,
            tx,
        })
    }

    /// Forgets a watch (its stream ended or its client went away).
    pub(crate) fn unsubscribe(&mut self, id: u64) {
        self.subscribers.retain(|s| s.id != id);
    }

    /// Whether a watch is still registered.
    pub(crate) fn is_subscribed(&self, id: u64) -> bool {
        self.subscribers.iter().any(|s| s.id == id)
    }

    /// Compacts all history: open watches get a 410 ERROR event and end; later
    /// watches and exact lists from an older resourceVersion get 410.
    pub(crate) fn expire(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        for s in self.subscribers.drain(..) {
            let status = status::failure(
                410,
                "Expired",
                &format!(
                    "The resourceVersion for the provided watch is too old. (compacted at {})",
                    self.compacted
                ),
                None,
            );
            // A closed receiver just means that client already went away.
            let _ = s.tx.send(WatchMsg::Expired(event_line("ERROR", &status)));
        }
    }

    /// Ends every open watch (cleanly, as an API server shutting down does).
    pub(crate) fn close_all(&mut self) {
        for s in self.subscribers.drain(..) {
            let _ = s.tx.send(WatchMsg::Close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn uids_are_unique_and_uuid_shaped() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}

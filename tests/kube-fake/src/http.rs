//! The HTTP/1.1 side: connection handling (hyper, keep-alive), routing of the
//! Kubernetes REST paths, and the list, get and watch handlers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Outage;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status;
use crate::store::{Filter, Key, Shared, Store, TypeInfo, WatchFrom, WatchMsg, WatchOutcome, lock};

/// The body type of every response: a full JSON document or a watch stream.
type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// An error answer computed while parsing a request (boxed: responses are large).
type Rejection = Box<Response<ResBody>>;

/// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A watch without `timeoutSeconds` ends after this long (the real server
/// picks a random time of about this order).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Accepts connections until the task is aborted; aborting it also ends every
/// connection (they live in its `JoinSet`).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_conn(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // EMFILE and the like: back off briefly instead of spinning.
                    warn!("kube-fake: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    // Latency matters more than throughput for one-line watch events.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { handle(&shared, &req) }
    });
    let mut builder = http1::Builder::new();
    // Keep-alive connections may sit idle for long: no header read timeout.
    builder.keep_alive(true).header_read_timeout(None);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!("kube-fake: connection ended: {e}");
    }
}

fn full(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into()).boxed_unsync()
}

fn response(code: StatusCode, content_type: &'static str, body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    *res.status_mut() = code;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-cache, private"),
    );
    res
}

fn json_response(code: StatusCode, body: &Value) -> Response<ResBody> {
    response(code, "application/json", full(body.to_string()))
}

/// A failure Status response (the status code is the Status's `code`).
fn status_response(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<ResBody> {
    let http_code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(http_code, &status::failure(code, reason, message, details))
}

fn not_found() -> Response<ResBody> {
    status_response(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn bad_request(message: &str) -> Response<ResBody> {
    status_response(400, "BadRequest", message, None)
}

fn invalid(message: &str) -> Response<ResBody> {
    status_response(422, "Invalid", message, None)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query parameters of a request.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let pairs = q
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (percent_decode(k), percent_decode(v)),
                None => (percent_decode(p), String::new()),
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as the real server parses it (`true`, `1`, ...).
    fn flag(&self, name: &str) -> Result<bool, Rejection> {
        match self.get(name) {
            None | Some("") => Ok(false),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(Box::new(bad_request(&format!(
                "{name}: Invalid value: {other:?}: not a boolean"
            )))),
        }
    }
}

/// What a resource path names.
struct Target {
    ty: usize,
    info: TypeInfo,
    namespace: Option<String>,
    name: Option<String>,
}

/// Resolves `/api/v1/...` and `/apis/{group}/{version}/...` resource paths.
fn route(store: &Store, path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let lookup = |plural: &str| {
        let ty = store.find_type(group, version, plural)?;
        Some((ty, store.type_info(ty)?.clone()))
    };
    let target = |ty, info, namespace: Option<&str>, name: Option<&str>| Target {
        ty,
        info,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    };
    match rest {
        [plural] => {
            let (ty, info) = lookup(plural)?;
            Some(target(ty, info, None, None))
        }
        [plural, name] => {
            let (ty, info) = lookup(plural)?;
            (!info.namespaced && !name.is_empty()).then(|| target(ty, info, None, Some(name)))
        }
        ["namespaces", ns, plural] => {
            let (ty, info) = lookup(plural)?;
            (info.namespaced && !ns.is_empty()).then(|| target(ty, info, Some(ns), None))
        }
        ["namespaces", ns, plural, name] => {
            let (ty, info) = lookup(plural)?;
            (info.namespaced && !ns.is_empty() && !name.is_empty())
                .then(|| target(ty, info, Some(ns), Some(name)))
        }
        _ => None,
    }
}

/// Answers one request; an `Err` makes hyper close the connection without
/// a response (the [`Outage::CloseConnections`] outage).
fn handle(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
) -> Result<Response<ResBody>, std::io::Error> {
    let uri = req.uri();
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), ToString::to_string);
    lock(&shared.requests).push(format!("{} {}", req.method(), path_and_query));

    let store = lock(&shared.store);
    match store.outage {
        None => Ok(serve_request(shared, store, req)),
        Some(Outage::ServiceUnavailable) => {
            let mut res = status_response(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
                None,
            );
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            Ok(res)
        }
        Some(Outage::CloseConnections) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated API server outage",
        )),
    }
}

/// Answers a request while the server is up.
fn serve_request(
    shared: &Arc<Shared>,
    store: std::sync::MutexGuard<'_, Store>,
    req: &Request<Incoming>,
) -> Response<ResBody> {
    let uri = req.uri();
    if req.method() != Method::GET {
        return status_response(
            405,
            "MethodNotAllowed",
            &format!(
                "the fake API server only serves reads, not {}",
                req.method()
            ),
            None,
        );
    }
    let path = uri.path();
    if let Some(res) = meta_endpoint(&store, shared, path) {
        return res;
    }
    let Some(target) = route(&store, path) else {
        return not_found();
    };
    let query = Query::parse(uri.query());
    let watch = match query.flag("watch") {
        Ok(w) => w,
        Err(res) => return *res,
    };
    if watch {
        return handle_watch(shared, store, target, &query);
    }
    match &target.name {
        Some(name) => {
            let ns = target.namespace.as_deref().unwrap_or_default();
            match store.get(target.ty, ns, name) {
                Some(obj) => json_response(StatusCode::OK, &obj),
                None => {
                    let mut details = json!({ "name": name, "kind": target.info.plural });
                    if !target.info.group.is_empty() {
                        details["group"] = json!(target.info.group);
                    }
                    let what = if target.info.group.is_empty() {
                        target.info.plural.clone()
                    } else {
                        format!("{}.{}", target.info.plural, target.info.group)
                    };
                    status_response(
                        404,
                        "NotFound",
                        &format!("{what} \"{name}\" not found"),
                        Some(details),
                    )
                }
            }
        }
        None => handle_list(&store, target, &query),
    }
}

/// `/version`, health checks and discovery documents.
fn meta_endpoint(store: &Store, shared: &Shared, path: &str) -> Option<Response<ResBody>> {
    let path = path.trim_end_matches('/');
    let res = match path {
        "/healthz" | "/livez" | "/readyz" => {
            response(StatusCode::OK, "text/plain; charset=utf-8", full("ok"))
        }
        "/version" => json_response(
            StatusCode::OK,
            &json!({
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.0-laneway-kube-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        "/api" => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    { "clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string() }
                ],
            }),
        ),
        "/apis" => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for t in store.types().iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, versions)) if !versions.contains(&t.version) => {
                        versions.push(t.version.clone());
                    }
                    Some(_) => {}
                    None => groups.push((t.group.clone(), vec![t.version.clone()])),
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, versions)| {
                    let versions: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v }))
                        .collect();
                    json!({
                        "name": g,
                        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
                        "versions": versions,
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
            )
        }
        _ => {
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let (group, version) = match segs.as_slice() {
                ["api", version] => ("", *version),
                ["apis", group, version] => (*group, *version),
                _ => return None,
            };
            let resources: Vec<Value> = store
                .types()
                .iter()
                .filter(|t| t.group == group && t.version == version)
                .map(|t| {
                    json!({
                        "name": t.plural,
                        "singularName": t.kind.to_lowercase(),
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": ["get", "list", "watch"],
                    })
                })
                .collect();
            if resources.is_empty() {
                return Some(not_found());
            }
            let group_version = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": resources,
                }),
            )
        }
    };
    Some(res)
}

/// Parses the selectors of a list or watch into a filter.
fn filter_for(target: &Target, query: &Query) -> Result<Filter, Rejection> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(|e| Box::new(bad_request(&e.0)))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").unwrap_or_default(),
        &target.info.kind,
    )
    .map_err(|e| Box::new(bad_request(&e.0)))?;
    Ok(Filter {
        ty: target.ty,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        labels,
        fields,
    })
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The opaque `continue` token: the list's resourceVersion and the last key returned.
fn encode_continue(rv: u64, key: &Key) -> String {
    hex_encode(&format!("{rv}\u{0}{}\u{0}{}", key.0, key.1))
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    let text = hex_decode(token)?;
    let mut parts = text.split('\u{0}');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    Some((rv, (ns, name)))
}

fn handle_list(store: &Store, target: Target, query: &Query) -> Response<ResBody> {
    let filter = match filter_for(&target, query) {
        Ok(f) => f,
        Err(res) => return *res,
    };
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return bad_request(&format!("limit: Invalid value: {l:?}")),
        },
    };
    let cont = match query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match decode_continue(c) {
            Some(c) => Some(c),
            None => {
                return bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                );
            }
        },
    };
    let rv_param = query.get("resourceVersion").filter(|r| !r.is_empty());
    let exact = query.get("resourceVersionMatch") == Some("Exact");
    let at = match (&cont, rv_param) {
        (Some((rv, _)), _) => Some(*rv),
        (None, Some(r)) if exact => match r.parse::<u64>() {
            Ok(rv) if rv > store.resource_version() => {
                return status_response(
                    504,
                    "Timeout",
                    &format!(
                        "Too large resource version: {rv}, current: {}",
                        store.resource_version()
                    ),
                    None,
                );
            }
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(&format!("resourceVersion: Invalid value: {r:?}")),
        },
        (None, Some(r)) if r.parse::<u64>().is_err() => {
            return bad_request(&format!("resourceVersion: Invalid value: {r:?}"));
        }
        _ => None,
    };
    let snapshot = match store.list(&filter, at) {
        Ok(s) => s,
        Err(status) => {
            let message = if cont.is_some() {
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".to_string()
            } else {
                status["message"].as_str().unwrap_or_default().to_string()
            };
            return status_response(410, "Expired", &message, None);
        }
    };
    let start = cont.map(|(_, key)| key);
    let mut items = snapshot
        .items
        .into_iter()
        .filter(|(k, _)| start.as_ref().is_none_or(|s| k > s))
        .peekable();
    let mut page = Vec::new();
    let mut last_key = None;
    for (key, obj) in items.by_ref() {
        // The real server omits apiVersion and kind on list items.
        let mut obj = Value::clone(&obj);
        if let Some(map) = obj.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        page.push(obj);
        last_key = Some(key);
        if limit.is_some_and(|l| page.len() >= l) {
            break;
        }
    }
    let remaining = items.count();
    let mut metadata = json!({ "resourceVersion": snapshot.rv.to_string() });
    if remaining > 0
        && let Some(key) = &last_key
    {
        metadata["continue"] = json!(encode_continue(snapshot.rv, key));
        metadata["remainingItemCount"] = json!(remaining);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", target.info.kind),
            "apiVersion": target.info.api_version,
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn handle_watch(
    shared: &Arc<Shared>,
    mut store: std::sync::MutexGuard<'_, Store>,
    target: Target,
    query: &Query,
) -> Response<ResBody> {
    let filter = match filter_for(&target, query) {
        Ok(f) => f,
        Err(res) => return *res,
    };
    let (send_initial, bookmarks) = match (
        query.flag("sendInitialEvents"),
        query.flag("allowWatchBookmarks"),
    ) {
        (Ok(s), Ok(b)) => (s, b),
        (Err(res), _) | (_, Err(res)) => return *res,
    };
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    // The real server's ListOptions validation for watches.
    if send_initial {
        if rv_match != Some("NotOlderThan") {
            return invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            );
        }
        if !bookmarks {
            return invalid(
                "allowWatchBookmarks: Required value: sendInitialEvents requires setting allowWatchBookmarks to true",
            );
        }
    } else if query.get("sendInitialEvents").is_none() && rv_match.is_some() {
        return invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        );
    }
    let from = match query.get("resourceVersion").filter(|r| !r.is_empty()) {
        _ if send_initial => WatchFrom::InitialEvents,
        None | Some("0") => WatchFrom::Current,
        Some(r) => match r.parse::<u64>() {
            Ok(rv) => WatchFrom::After(rv),
            Err(_) => return bad_request(&format!("resourceVersion: Invalid value: {r:?}")),
        },
    };
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(t) => match t.parse::<u64>() {
            Ok(0) => DEFAULT_WATCH_TIMEOUT,
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => return bad_request(&format!("timeoutSeconds: Invalid value: {t:?}")),
        },
    };
    let ty = filter.ty;
    let start = match store.watch(filter, from) {
        WatchOutcome::Started(start) => start,
        WatchOutcome::Expired(line) => {
            // As the real server: 200, then the ERROR event, then the end of the stream.
            drop(store);
            let stream = futures::stream::iter([Ok::<_, Infallible>(Frame::data(line))]);
            return response(
                StatusCode::OK,
                "application/json",
                StreamBody::new(stream).boxed_unsync(),
            );
        }
    };
    drop(store);
    let now = Instant::now();
    let watch = WatchStream {
        shared: Arc::clone(shared),
        ty,
        id: start.id,
        initial: start.initial,
        rx: start.rx,
        tx: start.tx,
        deadline: now + timeout,
        bookmarks,
        next_bookmark: now + BOOKMARK_INTERVAL,
        done: false,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), w))
    });
    response(
        StatusCode::OK,
        "application/json",
        StreamBody::new(stream).boxed_unsync(),
    )
}

/// One open watch response body. Dropping it (stream end, or the client going
/// away) unregisters the watch.
struct WatchStream {
    shared: Arc<Shared>,
    ty: usize,
    id: u64,
    initial: VecDeque<Bytes>,
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    tx: mpsc::UnboundedSender<WatchMsg>,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Instant,
    done: bool,
}

impl WatchStream {
    /// The next event line, or `None` at the end of the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(line) = self.initial.pop_front() {
            self.next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
            return Some(line);
        }
        loop {
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(WatchMsg::Line(line)) => {
                        self.next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
                        return Some(line);
                    }
                    Some(WatchMsg::Expired(line)) => {
                        self.done = true;
                        return Some(line);
                    }
                    Some(WatchMsg::Close) | None => return None,
                },
                () = tokio::time::sleep_until(self.deadline) => return None,
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    // Queued under the store lock, so every change up to the
                    // bookmark's resourceVersion is already ahead of it.
                    {
                        let store = lock(&self.shared.store);
                        if store.is_subscribed(self.id) {
                            let _ = self.tx.send(WatchMsg::Line(store.bookmark_line(self.ty, false)));
                        }
                    }
                    self.next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
                }
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        lock(&self.shared.store).unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%3Db%2Cc+d"), "a=b,c d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn continue_token_round_trip() {
        let key = ("ns".to_string(), "name".to_string());
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token), Some((42, key)));
        assert_eq!(decode_continue("zz"), None);
    }
}

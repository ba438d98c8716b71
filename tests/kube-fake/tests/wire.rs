//! The bytes on the wire, read with a hand-written HTTP/1.1 client: chunked
//! watch framing, keep-alive, Status bodies of errors, list JSON shape.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use laneway_kube_fake::FakeApiServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A minimal HTTP/1.1 client over one kept-alive connection.
struct Conn {
    r: BufReader<TcpStream>,
}

/// One response: status, lowercase headers, and body chunks as framed.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Vec<u8>>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }
}

impl Conn {
    async fn open(server: &FakeApiServer) -> Self {
        let s = TcpStream::connect(server.addr()).await.expect("connect");
        Self {
            r: BufReader::new(s),
        }
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        within(10, "a line", self.r.read_line(&mut l))
            .await
            .expect("read");
        assert!(l.ends_with("\r\n"), "line not CRLF-terminated: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    async fn get(&mut self, path: &str) -> Resp {
        let req = format!("GET {path} HTTP/1.1\r\nHost: fake\r\nAccept: application/json\r\n\r\n");
        self.r
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"));
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let l = self.line().await;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            chunks: Vec::new(),
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).expect("chunk size");
                let mut data = vec![0; size];
                within(10, "chunk", self.r.read_exact(&mut data))
                    .await
                    .expect("chunk");
                assert_eq!(self.line().await, "", "chunk not followed by CRLF");
                if size == 0 {
                    break;
                }
                resp.chunks.push(data);
            }
        } else {
            let len: usize = resp
                .header("content-length")
                .expect("content-length or chunked")
                .parse()
                .expect("length");
            let mut data = vec![0; len];
            within(10, "body", self.r.read_exact(&mut data))
                .await
                .expect("body");
            resp.chunks.push(data);
        }
        resp
    }
}

fn assert_status(resp: &Resp, code: u16, reason: &str) {
    assert_eq!(resp.status, code);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let s = resp.json();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["code"], code);
    assert_eq!(s["reason"], reason);
    assert!(s["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn watch_is_chunked_one_event_per_line_and_connection_is_reused() {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[("app", "web")], "n1"));
    server.apply(pod("ns", "b", &[("app", "db")], "n1"));
    let mut c = Conn::open(&server).await;

    let resp = c
        .get("/api/v1/namespaces/ns/pods?watch=1&labelSelector=app%3Dweb&timeoutSeconds=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let body = String::from_utf8(resp.body()).expect("utf-8");
    assert!(body.ends_with('\n'));
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["kind"], "Pod");
    assert_eq!(events[0]["object"]["apiVersion"], "v1");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        events[1]["object"]["metadata"]["resourceVersion"],
        server.resource_version()
    );
    assert!(
        events[2..].iter().all(|e| e["type"] == "BOOKMARK"),
        "{events:?}"
    );
    // Every event arrived in its own chunk.
    assert!(
        resp.chunks
            .iter()
            .all(|c| c.ends_with(b"\n") && c.iter().filter(|b| **b == b'\n').count() == 1)
    );

    // Same connection: a list, whose items carry no apiVersion/kind.
    let list = c.get("/api/v1/pods").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.resource_version()
    );
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert!(list["items"][0].get("kind").is_none());
    assert!(list["items"][0].get("apiVersion").is_none());

    let slices = c
        .get("/apis/discovery.k8s.io/v1/endpointslices")
        .await
        .json();
    assert_eq!(slices["kind"], "EndpointSliceList");
    assert_eq!(slices["apiVersion"], "discovery.k8s.io/v1");
}

#[tokio::test]
async fn live_events_arrive_as_they_happen() {
    let server = FakeApiServer::start_local();
    let mut c = Conn::open(&server).await;
    let rv = server.resource_version();
    let req = format!(
        "GET /api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=5 HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    c.r.get_mut()
        .write_all(req.as_bytes())
        .await
        .expect("write");
    while !c.line().await.is_empty() {}
    server.apply(pod("ns", "a", &[], ""));
    let size = usize::from_str_radix(&c.line().await, 16).expect("size");
    let mut data = vec![0; size];
    within(5, "event chunk", c.r.read_exact(&mut data))
        .await
        .expect("read");
    let ev: Value = serde_json::from_slice(&data).expect("event");
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "a");
    assert_eq!(ev["object"]["metadata"]["namespace"], "ns");
    server.delete::<Pod>(Some("ns"), "a");
    assert_eq!(c.line().await, "");
    let size = usize::from_str_radix(&c.line().await, 16).expect("size");
    let mut data = vec![0; size];
    within(5, "event chunk", c.r.read_exact(&mut data))
        .await
        .expect("read");
    let ev: Value = serde_json::from_slice(&data).expect("event");
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        server.resource_version()
    );
}

#[tokio::test]
async fn errors_are_status_objects() {
    let server = FakeApiServer::start_local();
    server.apply(pod("ns", "a", &[], ""));
    let mut c = Conn::open(&server).await;
    assert_status(&c.get("/api/v1/widgets").await, 404, "NotFound");
    assert_status(&c.get("/nothing/here").await, 404, "NotFound");
    // Pods are namespaced: not served by name at the cluster level.
    assert_status(&c.get("/api/v1/pods/a").await, 404, "NotFound");
    let nf = c.get("/api/v1/namespaces/ns/pods/zzz").await;
    assert_status(&nf, 404, "NotFound");
    assert_eq!(nf.json()["details"]["name"], "zzz");
    assert_status(
        &c.get("/api/v1/pods?labelSelector=a%20in%20b").await,
        400,
        "BadRequest",
    );
    assert_status(
        &c.get("/api/v1/pods?watch=true&resourceVersion=abc").await,
        400,
        "BadRequest",
    );
    assert_status(
        &c.get("/api/v1/pods?watch=true&sendInitialEvents=true")
            .await,
        422,
        "Invalid",
    );
    // The single-object GET works on the same connection afterwards.
    let ok = c.get("/api/v1/namespaces/ns/pods/a").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["kind"], "Pod");

    // A watch from before a compaction: 200, one ERROR event, end of stream.
    let old = server.resource_version();
    server.apply(pod("ns", "b", &[], ""));
    server.expire_watches();
    let gone = c
        .get(&format!("/api/v1/pods?watch=true&resourceVersion={old}"))
        .await;
    assert_eq!(gone.status, 200);
    let ev: Value = serde_json::from_slice(&gone.body()).expect("event");
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    server.set_down(true);
    let down = c.get("/api/v1/pods").await;
    assert_status(&down, 503, "ServiceUnavailable");
    server.set_down(false);
    assert_eq!(c.get("/api/v1/pods").await.status, 200);

    let reqs = server.requests();
    assert!(
        reqs.contains(&"GET /api/v1/widgets".to_string()),
        "{reqs:?}"
    );
    assert!(reqs.contains(&"GET /api/v1/pods?labelSelector=a%20in%20b".to_string()));
}

#[tokio::test]
async fn open_watches_end_on_expire_and_on_outage() {
    let server = FakeApiServer::start_local();
    let mut c1 = Conn::open(&server).await;
    let mut c2 = Conn::open(&server).await;
    let rv = server.resource_version();
    let expire = tokio::spawn(async move {
        let r = c1
            .get(&format!("/api/v1/pods?watch=true&resourceVersion={rv}"))
            .await;
        (r, c1)
    });
    eventually(5, "first watch", || server.open_watches() == 1).await;
    server.expire_watches();
    let (r, _) = within(5, "expired watch ends", expire).await.expect("task");
    let ev: Value = serde_json::from_slice(&r.body()).expect("event");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(server.open_watches(), 0);

    let rv = server.resource_version();
    let outage = tokio::spawn(async move {
        c2.get(&format!(
            "/api/v1/namespaces?watch=true&resourceVersion={rv}"
        ))
        .await
    });
    eventually(5, "second watch", || server.open_watches() == 1).await;
    server.set_down(true);
    let r = within(5, "watch ends on outage", outage)
        .await
        .expect("task");
    assert_eq!(r.status, 200);
    assert!(r.body().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.open_watches(), 0);
}

#[tokio::test]
async fn discovery_and_version() {
    let server = FakeApiServer::start_local();
    let mut c = Conn::open(&server).await;
    let v1 = c.get("/api/v1").await.json();
    assert_eq!(v1["kind"], "APIResourceList");
    let names: Vec<&str> = v1["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["namespaces", "pods", "services"]);
    let apis = c.get("/apis").await.json();
    assert_eq!(apis["groups"][0]["name"], "discovery.k8s.io");
    assert_eq!(c.get("/version").await.json()["major"], "1");
    assert_eq!(c.get("/healthz").await.body(), b"ok");

    let client = client(&server);
    let info = client.apiserver_version().await.expect("version");
    assert_eq!(info.major, "1");
}

//! Backends that answer with their own identity: an HTTP/1.1 server and a
//! TCP echo server, each listening inside a pod's netns (IPv4 and IPv6).
//!
//! The HTTP backend answers every request with headers `x-endpoint` (its
//! name), `x-peer` (the source address it saw: the calling pod's, whether
//! the request came the direct way or through the router; the node's for a
//! caller that is no enrolled pod, through the router) and `x-seen-tag` (the
//! tag header it received), `x-seen-headers` (the names of every header it
//! received, comma-separated), and its name as the body.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use crate::node::Pod;

/// A running backend; stops on drop.
#[derive(Debug)]
pub struct Backend {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    /// The connections being served (by accept number), to cut them all
    /// when the backend stops.
    open: Arc<std::sync::Mutex<Vec<(u64, TcpStream)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Serves HTTP as `pod`'s name on `port`.
    pub fn http(pod: &Pod, port: u16) -> Result<Self> {
        let name = pod.name.clone();
        Self::start(pod, port, move |stream| {
            serve_http(stream, &name, |_| Vec::new())
        })
    }

    /// Serves HTTP as `pod`'s name on `port`, and for each request calls
    /// `upstream` from inside the pod (so through laneway when the pod is
    /// enrolled), forwarding the `x-mse-tag` header it got when
    /// `forward_tag`, as an app that propagates its lane does. Answers with
    /// `x-upstream-endpoint` and `x-upstream-seen-tag` from the upstream's
    /// answer.
    pub fn forwarder(
        pod: &Pod,
        port: u16,
        upstream: SocketAddr,
        forward_tag: bool,
    ) -> Result<Self> {
        let name = pod.name.clone();
        let netns = Arc::new(pod.netns.file()?);
        Self::start(pod, port, move |stream| {
            // This connection's thread makes its upstream calls from the pod.
            if crate::netns::enter(&netns).is_err() {
                return;
            }
            serve_http(stream, &name, |headers| {
                let tag = headers
                    .iter()
                    .find(|(n, _)| n == "x-mse-tag")
                    .map(|(_, v)| v.clone())
                    .filter(|_| forward_tag);
                call(upstream, tag.as_deref())
            })
        })
    }

    /// Answers every connection with `reply` (whatever it is, e.g. not HTTP)
    /// once it has read something, then closes.
    pub fn raw(pod: &Pod, port: u16, reply: &'static [u8]) -> Result<Self> {
        Self::start(pod, port, move |mut stream| {
            let mut buf = [0u8; 4096];
            if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                let _ = stream.write_all(reply);
            }
        })
    }

    /// Like [`Backend::raw`], but resets the connection (RST) after `reply`
    /// instead of closing it.
    pub fn raw_then_reset(pod: &Pod, port: u16, reply: &'static [u8]) -> Result<Self> {
        Self::start(pod, port, move |mut stream| {
            let mut buf = [0u8; 4096];
            if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                let _ = stream.write_all(reply);
                let _ = crate::client::reset_on_close(&stream);
            }
        })
    }

    /// Echoes bytes on `port` until the client half-closes, then closes.
    pub fn echo(pod: &Pod, port: u16) -> Result<Self> {
        Self::start(pod, port, serve_echo)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// TCP connections being served now (accepted, and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    fn start(
        pod: &Pod,
        port: u16,
        serve: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
    ) -> Result<Self> {
        let listener = listen(pod, port)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, accepted2, open2) = (stop.clone(), accepted.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let id = accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        if let (Ok(clone), Ok(mut open)) = (stream.try_clone(), open2.lock()) {
                            open.push((id, clone));
                        }
                        let (serve, open) = (serve.clone(), open2.clone());
                        std::thread::spawn(move || {
                            serve(stream);
                            // Served: the last handle goes, the socket closes.
                            if let Ok(mut open) = open.lock() {
                                open.retain(|(other, _)| *other != id);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            stop,
            accepted,
            open,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    /// Stops like a killed process: the listener closes and every open
    /// connection is cut.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(open) = self.open.lock() {
            for (_, stream) in open.iter() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// A non-blocking listener on `port` inside `pod`: dual-stack (`[::]` takes
/// IPv4 too, bindv6only is 0 in a fresh netns), or `0.0.0.0` on a pod
/// without IPv6.
pub fn listen(pod: &Pod, port: u16) -> Result<TcpListener> {
    let listener = pod.netns.run(move || {
        TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))
    })??;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve_echo(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// One upstream call; its `x-endpoint` and `x-seen-tag` as response headers.
fn call(upstream: SocketAddr, tag: Option<&str>) -> Vec<(String, String)> {
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&upstream, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let tag = tag
            .map(|t| format!("x-mse-tag: {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET / HTTP/1.1\r\nhost: {upstream}\r\n{tag}connection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    let Ok(text) = answer else {
        return vec![("x-upstream-endpoint".into(), "error".into())];
    };
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("-")
            .trim()
            .to_owned()
    };
    vec![
        ("x-upstream-endpoint".into(), header("x-endpoint")),
        ("x-upstream-seen-tag".into(), header("x-seen-tag")),
    ]
}

fn serve_http(
    stream: TcpStream,
    name: &str,
    extra: impl Fn(&[(String, String)]) -> Vec<(String, String)>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_canonical().to_string())
        .unwrap_or_default();
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        let all: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let header = |n: &str| all.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let seen_tag = header("x-mse-tag").unwrap_or_else(|| "-".into());
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = format!("{name}\n");
        let extra: String = extra(&all)
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let baggage = header("baggage").unwrap_or_else(|| "-".into());
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        let names = names.join(",");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-endpoint: {name}\r\nx-peer: {peer}\r\n\
             x-seen-tag: {seen_tag}\r\nx-seen-baggage: {baggage}\r\nx-seen-headers: {names}\r\nx-body-bytes: {length}\r\n{extra}\
             content-length: {}\r\n{}\r\n{reply}",
            reply.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

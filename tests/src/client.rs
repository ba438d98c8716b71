//! A small blocking HTTP/1.1 client whose sockets are made inside a pod's
//! netns, so the agent's programs see them as that pod's.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::node::Pod;

/// The request field that asks laneway's router to explain its route, and
/// the response field it answers in.
const ROUTE_HEADER: &str = laneway::router::ROUTE_HEADER;

/// Opens a TCP connection from inside `pod`.
pub fn connect(pod: &Pod, to: SocketAddr) -> Result<TcpStream> {
    connect_in(&pod.netns.file()?, to).with_context(|| format!("connect from {}", pod.name))
}

/// Opens a TCP connection from inside the netns `netns` (a pod's
/// [`crate::netns::Netns::file`]), with 10 s read and write timeouts.
pub fn connect_in(netns: &std::fs::File, to: SocketAddr) -> Result<TcpStream> {
    let stream = crate::netns::run_in(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })?
    .with_context(|| format!("connect to {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (lowercase names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request went through laneway's router: it answered the
    /// `x-laneway-route` question that [`Conn::get`] asks with every request
    /// (the test backends never send that field, so the direct, DNAT path
    /// cannot). The source address tells nothing any more: the router
    /// connects from the calling pod's own address. L4 streams carry no such
    /// answer.
    pub fn routed(&self) -> bool {
        self.header(ROUTE_HEADER).is_some()
    }

    /// The endpoint that answered (`x-endpoint`), or "" for laneway's own answers.
    pub fn endpoint(&self) -> &str {
        self.header("x-endpoint").unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Conn {
    /// Connects from `pod` to `to`.
    pub fn open(pod: &Pod, to: SocketAddr) -> Result<Self> {
        Self::over(connect(pod, to)?, to)
    }

    /// Speaks over a connection already made to `to` (e.g. from a thread
    /// that is inside the pod's netns already).
    pub fn over(stream: TcpStream, to: SocketAddr) -> Result<Self> {
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            host: to.to_string(),
        })
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Sends `GET path` with extra headers and reads the response. The
    /// request asks laneway to explain its route (`x-laneway-route`), so
    /// the response says whether it went through the router
    /// ([`Response::routed`]).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(ROUTE_HEADER))
        {
            req.push_str(&format!("{ROUTE_HEADER}: 1\r\n"));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes())?;
        self.read_response()
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Whether the peer closed the connection (nothing more to read, end of
    /// stream) within `within`. Bytes that arrive instead are an error: after
    /// the answer this was asked about, nothing else was due.
    pub fn closed_within(&mut self, within: Duration) -> Result<bool> {
        self.writer.set_read_timeout(Some(within))?;
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => Ok(true),
            Ok(_) => bail!("more bytes after the answer"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Reads one response (Content-Length or chunked body, or until close).
    pub fn read_response(&mut self) -> Result<Response> {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                bail!("connection closed before a response head");
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head).context("parse response head")?;
        let status = resp.code.context("no status")?;
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            body.resize(len.trim().parse()?, 0);
            self.reader.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0; size + 2];
                if size == 0 {
                    let mut end = String::new();
                    self.reader.read_line(&mut end)?;
                    break;
                }
                self.reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..size]);
            }
        } else if status >= 200 && status != 204 && status != 304 {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection (asking laneway to explain its route,
/// as every [`Conn::get`]).
pub fn get(pod: &Pod, to: SocketAddr, headers: &[(&str, &str)]) -> Result<Response> {
    Conn::open(pod, to)?.get("/", headers)
}

/// `SO_LINGER` 0: closing the socket sends a reset and leaves no TIME_WAIT.
pub fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What [`under_load`] counted.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (no answer, or not 200).
    pub failed: u64,
    /// Of the `ok` ones, those that did not go through the router.
    pub direct: u64,
    /// Of the `ok` ones, by the endpoint that answered.
    pub by_endpoint: std::collections::BTreeMap<String, u64>,
    /// What the first few failures were.
    pub first_failures: Vec<String>,
}

impl LoadCounts {
    /// Notes what a failure was (the first few are kept).
    pub fn note(&mut self, failure: String) {
        if self.first_failures.len() < 5 {
            self.first_failures.push(failure);
        }
    }
}

/// Runs `during` while two workers in `pod` send requests to `to` without
/// pause: one on a keep-alive connection (a new one after a failure), one
/// on a new connection per request. The workers stop however `during`
/// ends; its error is returned after they have.
pub fn under_load(
    pod: &Pod,
    to: SocketAddr,
    during: impl FnOnce() -> Result<()>,
) -> Result<LoadCounts> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let counts = std::sync::Mutex::new(LoadCounts::default());
    std::thread::scope(|scope| {
        let _stop_on_exit = crate::StopOnDrop(&stop);
        for worker in 0..2 {
            let (stop, counts) = (&stop, &counts);
            scope.spawn(move || {
                let mut conn = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if conn.is_none() || worker == 1 {
                        conn = Conn::open(pod, to).ok();
                    }
                    let answer = conn.as_mut().map(|c| c.get("/", &[]));
                    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                    match answer {
                        Some(Ok(r)) if r.status == 200 => {
                            // As any HTTP/1.1 client: the server closes after
                            // this answer (a draining router does).
                            if r.header("connection")
                                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                            {
                                conn = None;
                            }
                            counts.ok += 1;
                            counts.direct += u64::from(!r.routed());
                            *counts
                                .by_endpoint
                                .entry(r.endpoint().to_owned())
                                .or_default() += 1;
                        }
                        failure => {
                            counts.failed += 1;
                            counts.note(match failure {
                                Some(Ok(r)) => format!("status {}: {}", r.status, r.text()),
                                Some(Err(e)) => format!("{e:#}"),
                                None => "no connection".into(),
                            });
                            conn = None;
                        }
                    }
                }
            });
        }
        during()
    })?;
    Ok(counts.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Repeats a request until `check` holds, for at most 10 s (the agent
/// applies a change within its debounce plus a watch round trip; an
/// external endpoint's health within a probe interval); the last answer.
pub fn eventually(
    what: &str,
    mut attempt: impl FnMut() -> Result<Response>,
    check: impl Fn(&Response) -> bool,
) -> Result<Response> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = attempt();
        if let Ok(r) = &last
            && check(r)
        {
            return last;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("not within 10 s: {what}; last: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

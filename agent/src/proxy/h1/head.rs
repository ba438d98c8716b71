//! Request and response heads: finding the end of a head, analysing the
//! headers that matter to a proxy (framing, connection management, upgrade,
//! expectations) and writing the head that goes to the other side.
//!
//! Request heads are re-serialised from the parsed fields (method, target,
//! version and every header in order, name case and value bytes unchanged)
//! with the tag header replaced; line endings are normalised to CRLF, so the
//! upstream parses exactly what we parsed. Response heads are forwarded
//! verbatim, with our extra fields inserted before the blank line.

use std::io::Write as _;

use super::body::{ChunkedDecoder, Framing};
use crate::proxy::{Target, valid_field_value};

/// Header fields per head we parse; more is answered with `431`.
pub(crate) const MAX_HEADERS: usize = 100;

/// Why a head was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The head does not follow HTTP/1.x syntax.
    #[error("malformed head: {0}")]
    Parse(httparse::Error),
    /// The head is larger than the configured maximum.
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    /// More header fields than we parse.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The head ended before it was complete.
    #[error("incomplete head")]
    Incomplete,
    /// A Content-Length value is not a decimal number.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// Several Content-Length fields with different values.
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    /// A request with both Content-Length and Transfer-Encoding.
    #[error("both content-length and transfer-encoding in a request")]
    LengthAndTransferEncoding,
    /// A request whose Transfer-Encoding does not end in (a single) chunked.
    #[error("request transfer-encoding does not end in chunked")]
    NotChunked,
    /// Transfer-Encoding in an HTTP/1.0 request.
    #[error("transfer-encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Error::TooManyHeaders,
            e => Error::Parse(e),
        }
    }
}

/// Position just past the blank line ending a head, searching from `from`
/// (pass the previously scanned length minus 3 when more bytes arrived).
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let nl = i + buf.get(i..)?.iter().position(|&b| b == b'\n')?;
        match buf.get(nl + 1)? {
            b'\n' => return Some(nl + 2),
            b'\r' if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Non-empty, trimmed elements of a comma-separated field value.
fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// Parse a Content-Length value; a list of identical values (`5, 5`) is
/// accepted as one value (RFC 9110 §8.6).
fn parse_content_length(v: &[u8]) -> Result<u64, Error> {
    let mut result = None;
    for item in v.split(|&b| b == b',') {
        let item = trim_ows(item);
        if item.is_empty() {
            return Err(Error::InvalidContentLength);
        }
        let mut n: u64 = 0;
        for &d in item {
            if !d.is_ascii_digit() {
                return Err(Error::InvalidContentLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(Error::InvalidContentLength)?;
        }
        match result {
            Some(prev) if prev != n => return Err(Error::ConflictingContentLength),
            _ => result = Some(n),
        }
    }
    result.ok_or(Error::InvalidContentLength)
}

/// The framing- and connection-related header fields of a head.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    chunked_count: u32,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_header: bool,
    /// Every protocol in `Upgrade` is `h2c`: an upgrade the router declines.
    upgrade_h2c_only: bool,
    expect_continue: bool,
}

impl Fields {
    fn collect(headers: &[httparse::Header<'_>]) -> Result<Self, Error> {
        let mut f = Fields::default();
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(h.value)?;
                match f.content_length {
                    Some(prev) if prev != n => return Err(Error::ConflictingContentLength),
                    _ => f.content_length = Some(n),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.transfer_encoding = true;
                // An empty value counts as a coding that is not chunked.
                f.chunked_last = false;
                for coding in list_items(h.value) {
                    f.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                    if f.chunked_last {
                        f.chunked_count += 1;
                    }
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in list_items(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        f.upgrade_token = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                f.up(h.value);
            } else if name.eq_ignore_ascii_case("expect") {
                f.expect_continue |= trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        Ok(f)
    }

    /// Records an `Upgrade` field.
    fn up(&mut self, value: &[u8]) {
        let only_h2c = list_items(value).all(|p| p.eq_ignore_ascii_case(b"h2c"));
        self.upgrade_h2c_only = only_h2c && (!self.upgrade_header || self.upgrade_h2c_only);
        self.upgrade_header = true;
    }

    fn persistent(&self, version: u8) -> bool {
        !self.close && (version >= 1 || self.keep_alive)
    }
}

/// What the engine needs to know about a request.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    /// Request body framing.
    pub framing: Framing,
    /// Minor HTTP version (0 or 1).
    pub version: u8,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Connection: upgrade` plus an `Upgrade` field, other than to h2c
    /// (served as HTTP/1.1, the upgrade declined: the router speaks HTTP/2
    /// to clients that start with the preface).
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// HEAD request (the response has no body).
    pub is_head: bool,
    /// CONNECT request.
    pub is_connect: bool,
    /// An idempotent method (RFC 9110 §9.2.2): safe to send again when the
    /// upstream failed before answering.
    pub idempotent: bool,
}

/// Check a parsed request's framing (RFC 9112 §6.3) and collect its
/// connection-management facts.
pub(crate) fn analyze_request(req: &httparse::Request<'_, '_>) -> Result<RequestInfo, Error> {
    let version = req.version.unwrap_or(1);
    let method = req.method.unwrap_or("");
    let f = Fields::collect(req.headers)?;
    let framing = if f.transfer_encoding {
        if f.content_length.is_some() {
            return Err(Error::LengthAndTransferEncoding);
        }
        if version == 0 {
            return Err(Error::TransferEncodingHttp10);
        }
        if !f.chunked_last || f.chunked_count != 1 {
            return Err(Error::NotChunked);
        }
        Framing::Chunked(ChunkedDecoder::new())
    } else {
        match f.content_length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    Ok(RequestInfo {
        framing,
        version,
        keep_alive: f.persistent(version),
        upgrade: f.upgrade_token && f.upgrade_header && !f.upgrade_h2c_only,
        expect_continue: f.expect_continue,
        is_head: method == "HEAD",
        is_connect: method == "CONNECT",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    })
}

/// Write the request head for upstream into `out`, without the fields the
/// router writes itself ([`Target::replaces`]: [`finish_request_head`]
/// writes them), without `Upgrade` and `HTTP2-Settings` unless `upgrade`,
/// and without the final blank line.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    req: &httparse::Request<'_, '_>,
    target: &Target,
    upgrade: bool,
) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(if req.version == Some(0) {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for h in req.headers.iter() {
        let upgrade_field =
            h.name.eq_ignore_ascii_case("upgrade") || h.name.eq_ignore_ascii_case("http2-settings");
        if target.replaces(h.name)
            || (upgrade_field && !upgrade)
            || (connection_specific(h.name, req.headers)
                && !(upgrade && h.name.eq_ignore_ascii_case("upgrade")))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
}

/// Whether a field describes the client's connection rather than the
/// request (RFC 9110 §7.6.1): `Connection`, the fields it names,
/// `Keep-Alive` and `Proxy-Connection`. They are not forwarded: the router
/// manages each connection itself, so a client's `Connection: close` does
/// not close the pooled upstream connection.
fn connection_specific(name: &str, headers: &[httparse::Header<'_>]) -> bool {
    ["connection", "keep-alive", "proxy-connection"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
        || headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| list_items(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Append the fields the router writes ([`Target::upstream_fields`]: tag
/// header and `baggage`) and the blank line.
pub(crate) fn finish_request_head(out: &mut Vec<u8>, target: &Target) {
    for (name, value) in target.upstream_fields() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the engine needs to know about a response.
#[derive(Debug)]
pub(crate) struct ResponseInfo {
    /// Status code.
    pub status: u16,
    /// Response body framing.
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    pub keep_alive: bool,
    /// The response already carries `Connection: close`.
    pub close_token: bool,
    /// The response already carries `Connection: keep-alive`.
    pub keep_alive_token: bool,
}

/// Parse a complete response head `raw` (exactly the head, blank line
/// included) to a request that was a HEAD request or not.
pub(crate) fn parse_response(raw: &[u8], request_is_head: bool) -> Result<ResponseInfo, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw)? {
        httparse::Status::Complete(n) if n == raw.len() => {}
        _ => return Err(Error::Incomplete),
    }
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let f = Fields::collect(resp.headers)?;
    let no_body = request_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if f.transfer_encoding {
        if f.chunked_last && f.chunked_count == 1 {
            Framing::Chunked(ChunkedDecoder::new())
        } else {
            Framing::UntilClose
        }
    } else {
        match f.content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keep_alive = f.persistent(version)
        && !(f.transfer_encoding && f.content_length.is_some())
        && !matches!(framing, Framing::UntilClose);
    Ok(ResponseInfo {
        status,
        framing,
        keep_alive,
        close_token: f.close,
        keep_alive_token: f.keep_alive,
    })
}

/// The `Connection` field to add to a response forwarded to the client:
/// `close` when the client's connection ends after it, `keep-alive` when an
/// HTTP/1.0 client's connection stays open (HTTP/1.0 closes unless told),
/// none when the upstream's head already says so.
pub(crate) fn connection_field(
    close_client: bool,
    request: &RequestInfo,
    response: &ResponseInfo,
) -> Option<&'static str> {
    match (close_client, request.version) {
        (true, _) if !response.close_token => Some("close"),
        (false, 0) if !response.keep_alive_token => Some("keep-alive"),
        _ => None,
    }
}

/// Write the response head for the client into `out`: `raw` verbatim, plus
/// `x-laneway-route` and `connection` fields when asked for.
pub(crate) fn write_response_head(
    out: &mut Vec<u8>,
    raw: &[u8],
    route: Option<&str>,
    connection: Option<&str>,
) {
    out.clear();
    let route = route.filter(|r| valid_field_value(r.as_bytes()));
    if route.is_none() && connection.is_none() {
        out.extend_from_slice(raw);
        return;
    }
    let cut = if raw.ends_with(b"\r\n") {
        raw.len() - 2
    } else if raw.ends_with(b"\n") {
        raw.len() - 1
    } else {
        raw.len()
    };
    out.extend_from_slice(&raw[..cut]);
    if let Some(route) = route {
        out.extend_from_slice(b"x-laneway-route: ");
        out.extend_from_slice(route.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reason phrase for the statuses we generate (and a generic one otherwise).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Write a response we generate ourselves into `out`.
pub(crate) fn write_error_response(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    route: Option<&str>,
    close: bool,
    include_body: bool,
) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(route) = route.filter(|r| valid_field_value(r.as_bytes())) {
        out.extend_from_slice(b"x-laneway-route: ");
        out.extend_from_slice(route.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if include_body {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_request<T>(raw: &[u8], f: impl FnOnce(&httparse::Request<'_, '_>) -> T) -> T {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(_)) => f(&req),
            other => panic!("parse: {other:?}"),
        }
    }

    fn target(tag: Option<&str>) -> Target {
        Target {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            tag_header: "x-mse-tag".into(),
            tag: tag.map(str::to_owned),
            baggage: None,
            route_header: None,
        }
    }

    fn analyze(raw: &str) -> Result<RequestInfo, Error> {
        with_request(raw.as_bytes(), analyze_request)
    }

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nX", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nX", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), None);
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 20),
            Some(24)
        );
        assert_eq!(find_head_end(b"", 0), None);
        assert_eq!(find_head_end(b"abc", 10), None);
    }

    #[test]
    fn request_framing() {
        let r = analyze("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(matches!(r.framing, Framing::Length(5)));
        let r = analyze("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n").unwrap();
        assert!(matches!(r.framing, Framing::Length(5)));
        let r = analyze("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(matches!(r.framing, Framing::Empty));
        let r = analyze("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap();
        assert!(matches!(r.framing, Framing::Chunked(_)));
        let r = analyze("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(matches!(r.framing, Framing::Empty));
        assert!(r.keep_alive && !r.upgrade && !r.is_head);
    }

    #[test]
    fn request_smuggling_defences() {
        let bad = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in bad {
            assert!(analyze(raw).is_err(), "{raw:?}");
        }
        // Identical duplicates are one value.
        let r = analyze("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n");
        assert!(matches!(r.unwrap().framing, Framing::Length(7)));
    }

    #[test]
    fn request_connection_management() {
        let r = analyze("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = analyze("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = analyze("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let r = analyze(
            "GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade);
        let r = analyze("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(!r.upgrade);
        let r =
            analyze("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(r.expect_continue);
        assert!(analyze("HEAD / HTTP/1.1\r\n\r\n").unwrap().is_head);
        assert!(
            analyze("CONNECT a:443 HTTP/1.1\r\n\r\n")
                .unwrap()
                .is_connect
        );
    }

    #[test]
    fn request_rewrite_replaces_tag() {
        let raw = b"POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-MSE-Tag: evil\r\nX-Other:  v w \r\nx-mse-tag: again\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), false)
        });
        let base = out.clone();
        finish_request_head(&mut out, &target(Some("blue")));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-Other: v w\r\nContent-Length: 0\r\nx-mse-tag: blue\r\n\r\n"
        );
        let mut out = base.clone();
        finish_request_head(&mut out, &target(None));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-Other: v w\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = base;
        finish_request_head(&mut out, &target(Some("a\r\nx: y")));
        assert!(!String::from_utf8(out).unwrap().contains("x: y"));
    }

    #[test]
    fn request_rewrite_drops_connection_specific_fields() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
                    Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-End: 2\r\n\r\n";
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), false)
        });
        finish_request_head(&mut out, &target(None));
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: a\r\nX-End: 2\r\n\r\n");

        let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\
                    Upgrade: websocket\r\n\r\n";
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), true)
        });
        finish_request_head(&mut out, &target(None));
        assert_eq!(
            out,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn an_h2c_upgrade_is_declined_and_its_fields_not_forwarded() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-End: 2\r\n\r\n";
        let info = with_request(raw, analyze_request).unwrap();
        assert!(!info.upgrade, "served as HTTP/1.1");
        assert!(info.keep_alive);
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), info.upgrade)
        });
        finish_request_head(&mut out, &target(None));
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: a\r\nX-End: 2\r\n\r\n");
        // Without `Connection` naming them, they are still not forwarded.
        let raw = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n";
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), false)
        });
        finish_request_head(&mut out, &target(None));
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        // Another protocol offered besides h2c is an upgrade as before.
        let raw = b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n";
        assert!(with_request(raw, analyze_request).unwrap().upgrade);
    }

    #[test]
    fn request_rewrite_keeps_http10_and_bare_lf() {
        let raw = b"GET / HTTP/1.0\nHost: a\n\n";
        let mut out = Vec::new();
        with_request(raw, |req| {
            write_request_head(&mut out, req, &target(None), false)
        });
        finish_request_head(&mut out, &target(Some("t")));
        assert_eq!(out, b"GET / HTTP/1.0\r\nHost: a\r\nx-mse-tag: t\r\n\r\n");
    }

    #[test]
    fn response_framing() {
        let p = |raw: &str, head: bool| parse_response(raw.as_bytes(), head);
        let r = p("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap();
        assert!(matches!(r.framing, Framing::Length(3)) && r.keep_alive && r.status == 200);
        let r = p("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap();
        assert!(matches!(r.framing, Framing::Empty) && r.keep_alive);
        let r = p("HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert!(matches!(r.framing, Framing::Empty) && r.keep_alive);
        let r = p(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(r.framing, Framing::Empty));
        let r = p("HTTP/1.1 100 Continue\r\n\r\n", false).unwrap();
        assert!(matches!(r.framing, Framing::Empty) && r.status == 100);
        let r = p(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(r.framing, Framing::Chunked(_)) && r.keep_alive);
        let r = p("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(r.framing, Framing::UntilClose) && !r.keep_alive);
        let r = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap();
        assert!(matches!(r.framing, Framing::UntilClose) && !r.keep_alive);
        let r = p(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(r.framing, Framing::Chunked(_)) && !r.keep_alive);
        let r = p(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!r.keep_alive && r.close_token);
        let r = p("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(!r.keep_alive);
        let r = p(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(r.keep_alive);
        assert!(p("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(p("NOT HTTP\r\n\r\n", false).is_err());
        assert!(p("HTTP/1.1 200 OK\r\n", false).is_err());
    }

    #[test]
    fn response_head_rewrite() {
        let raw = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        let mut out = Vec::new();
        write_response_head(&mut out, raw, None, None);
        assert_eq!(out, raw);
        write_response_head(&mut out, raw, Some("blue"), Some("close"));
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nA: b\r\nx-laneway-route: blue\r\nconnection: close\r\n\r\n"
        );
        write_response_head(&mut out, b"HTTP/1.1 204 No Content\n\n", Some("r"), None);
        assert_eq!(out, b"HTTP/1.1 204 No Content\nx-laneway-route: r\r\n\r\n");
    }

    #[test]
    fn error_response_format() {
        let mut out = Vec::new();
        write_error_response(&mut out, 503, "no lane\n", None, false, true);
        assert_eq!(
            out,
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\nno lane\n"
        );
        write_error_response(&mut out, 502, "x", Some("r1"), true, false);
        assert_eq!(
            out,
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 1\r\nx-laneway-route: r1\r\nconnection: close\r\n\r\n"
        );
    }
}

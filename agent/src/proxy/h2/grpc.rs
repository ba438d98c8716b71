//! gRPC over the HTTP/2 engine: the call's deadline (`grpc-timeout`), its
//! status (`grpc-status`, in the trailers or a trailers-only response), and
//! the router's own answers to a gRPC client, as statuses it can act on.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// `DEADLINE_EXCEEDED`: the upstream did not answer in time.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
/// `INTERNAL`: the request was malformed.
pub(crate) const INTERNAL: u32 = 13;
/// `PERMISSION_DENIED`: the service's `allow-from` rule refuses the caller.
pub(crate) const PERMISSION_DENIED: u32 = 7;

/// The call's deadline from `grpc-timeout` (`1..=8` digits and a unit:
/// `H`, `M`, `S`, `m`, `u`, `n`); `None` when absent or malformed.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of a response's trailers (or trailers-only head).
pub(crate) fn status(headers: &HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The gRPC status for an HTTP status the router answers with: `504` (the
/// router's response timeout) is `DEADLINE_EXCEEDED`, `403` (a caller the
/// service does not allow) `PERMISSION_DENIED`, `400`-class malformed
/// requests `INTERNAL`, anything else (no endpoint, strict lane, connect
/// failures) `UNAVAILABLE`, which a client may retry.
pub(crate) fn code_for(http_status: u16) -> u32 {
    match http_status {
        504 => DEADLINE_EXCEEDED,
        crate::proxy::STATUS_FORBIDDEN => PERMISSION_DENIED,
        400 | 405 | 413 | 431 => INTERNAL,
        _ => crate::proxy::GRPC_UNAVAILABLE,
    }
}

/// `grpc-message` encoding: percent-encode everything but printable ASCII
/// other than `%`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The router's own answer: for a gRPC call a trailers-only response (HTTP
/// 200, `grpc-status` and `grpc-message` in the head, no body); for any
/// other client `status` with `message` as a plain-text body. Returns the
/// head, its body (none for gRPC) and the gRPC status sent.
pub(crate) fn error_response(
    grpc: bool,
    status: u16,
    message: &str,
    route_header: Option<&str>,
) -> (Response<()>, Option<Bytes>, Option<u32>) {
    let mut response = Response::new(());
    if !grpc {
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    let headers = response.headers_mut();
    if let Some(route) = route_header.and_then(|r| HeaderValue::from_str(r).ok()) {
        headers.insert(crate::router::ROUTE_HEADER, route);
    }
    if grpc {
        let code = code_for(status);
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(text) = HeaderValue::from_str(&percent_encode(message.trim_end())) {
            headers.insert("grpc-message", text);
        }
        return (response, None, Some(code));
    }
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from(message.len()));
    (
        response,
        Some(Bytes::copy_from_slice(message.as_bytes())),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(
            timeout(&with("grpc-timeout", "250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            timeout(&with("grpc-timeout", "2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            timeout(&with("grpc-timeout", "1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            timeout(&with("grpc-timeout", "99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(timeout(&with("grpc-timeout", bad)), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn router_errors_as_grpc_statuses() {
        let (head, body, code) = error_response(
            true,
            503,
            "laneway: lane joint1 of service shop/reviews has no serving endpoint\n",
            Some("decision=strict-reject"),
        );
        assert_eq!(head.status(), 200, "trailers-only");
        assert_eq!(code, Some(14));
        assert!(body.is_none());
        assert_eq!(status(head.headers()), Some(14));
        assert_eq!(
            head.headers()["grpc-message"],
            "laneway: lane joint1 of service shop/reviews has no serving endpoint"
        );
        assert_eq!(head.headers()["x-laneway-route"], "decision=strict-reject");
        assert_eq!(error_response(true, 504, "t", None).2, Some(4));
        assert_eq!(error_response(true, 403, "denied", None).2, Some(7));
        assert_eq!(error_response(true, 400, "m", None).2, Some(13));
        assert_eq!(error_response(true, 502, "c", None).2, Some(14));
        let (head, body, code) = error_response(false, 503, "no lane\n", None);
        assert_eq!((head.status().as_u16(), code), (503, None));
        assert_eq!(body.as_deref(), Some(&b"no lane\n"[..]));
        assert_eq!(percent_encode("50% ü"), "50%25 %C3%BC");
    }
}

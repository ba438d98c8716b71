//! Protocol sniffing: decide from the client's first (peeked, not consumed)
//! bytes whether a connection speaks HTTP/1.x or something opaque.
//!
//! A connection is HTTP/1.x when it starts with a method token of uppercase
//! letters (RFC 9110 token, restricted to `A-Z` plus `-`/`_` after the first
//! letter) followed by a space. `PRI ` (the HTTP/2 connection preface) is
//! opaque. Anything else, including no bytes within the sniff timeout
//! (server-first protocols), is opaque.

use std::{io, time::Duration};

use tokio::{net::TcpStream, time::Instant};

/// Longest method token we wait for before deciding "opaque".
const MAX_METHOD_LEN: usize = 20;
/// How many bytes are peeked (enough for any accepted method plus the space).
const PEEK_LEN: usize = MAX_METHOD_LEN + 2;
/// Pause between peeks while the bytes so far are only a method prefix.
const REPEEK_INTERVAL: Duration = Duration::from_millis(2);

/// Result of sniffing a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Starts like an HTTP/1.x request.
    Http,
    /// Anything else, or nothing within the timeout.
    Opaque,
    /// The client closed the connection before sending anything.
    Closed,
}

/// Classify the first bytes of a connection; `None` = undecided yet (the bytes
/// are a prefix of an HTTP/1.x request start).
pub(crate) fn classify(bytes: &[u8]) -> Option<Sniffed> {
    for (i, &c) in bytes.iter().enumerate() {
        if c == b' ' {
            return Some(if i == 0 || &bytes[..i] == b"PRI" {
                Sniffed::Opaque
            } else {
                Sniffed::Http
            });
        }
        let token_char = c.is_ascii_uppercase() || (i > 0 && (c == b'-' || c == b'_'));
        if !token_char || i >= MAX_METHOD_LEN {
            return Some(Sniffed::Opaque);
        }
    }
    None
}

/// Peek at the client's first bytes for up to `timeout` and classify them.
pub(crate) async fn sniff(stream: &TcpStream, timeout: Duration) -> io::Result<Sniffed> {
    let deadline = super::deadline_after(timeout);
    let mut buf = [0u8; PEEK_LEN];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_elapsed) => return Ok(Sniffed::Opaque),
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(Sniffed::Closed);
        }
        if let Some(decided) = classify(&buf[..n]) {
            return Ok(decided);
        }
        // Only a prefix of a method so far: peek returns immediately while
        // data is queued, so wait a little before looking again.
        let now = Instant::now();
        if now >= deadline {
            return Ok(Sniffed::Opaque);
        }
        tokio::time::sleep_until(deadline.min(now + REPEEK_INTERVAL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http_methods() {
        for m in [
            "GET ",
            "POST ",
            "PUT ",
            "DELETE ",
            "HEAD ",
            "OPTIONS ",
            "PATCH ",
            "CONNECT ",
            "TRACE ",
            "PROPFIND ",
            "M-SEARCH ",
        ] {
            assert_eq!(classify(m.as_bytes()), Some(Sniffed::Http), "{m}");
        }
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Sniffed::Http)
        );
    }

    #[test]
    fn classifies_prefixes_as_undecided() {
        for p in ["", "G", "GE", "GET", "POS", "M-SEARCH"] {
            assert_eq!(classify(p.as_bytes()), None, "{p:?}");
        }
    }

    #[test]
    fn classifies_opaque() {
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Sniffed::Opaque)
        );
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Sniffed::Opaque)
        );
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Sniffed::Opaque));
        assert_eq!(classify(b" GET"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"-GET "), Some(Sniffed::Opaque));
        assert_eq!(classify(b"GET\r\n"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Sniffed::Opaque));
        assert_eq!(classify(&[b'A'; 40]), Some(Sniffed::Opaque));
        assert_eq!(classify(&[0u8; 4]), Some(Sniffed::Opaque));
    }
}

//! Protocol detection, in one place: decide from the client's first
//! (peeked, not consumed) bytes whether a connection speaks HTTP/1.x,
//! HTTP/2 with prior knowledge (h2c) or something opaque.
//!
//! A connection is HTTP/2 when it starts with the connection preface
//! (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), HTTP/1.x when it starts with
//! a method token of uppercase letters (RFC 9110 token, restricted to `A-Z`
//! plus `-`/`_` after the first letter) followed by a space. Anything else
//! is opaque. A client that sends no byte within the sniff timeout is
//! *silent*: a server-first protocol, or a client that connected ahead of
//! its first request; the L4 engine lets whoever speaks first decide. The
//! timeout applies to the first byte only: once bytes arrived, they decide
//! (a client's first segment may hold just `GE`), within the header timeout.

use std::{io, time::Duration};

use tokio::{net::TcpStream, time::Instant};

/// Longest method token we wait for before deciding "opaque".
const MAX_METHOD_LEN: usize = 20;
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How many bytes are peeked (enough for any accepted method plus the
/// space, and for the HTTP/2 preface).
const PEEK_LEN: usize = H2_PREFACE.len();
/// First pause between peeks while the bytes so far are only a method
/// prefix; it doubles while nothing new arrives, up to [`REPEEK_MAX`].
const REPEEK_MIN: Duration = Duration::from_millis(2);
/// Longest pause between peeks: a slow client is still seen promptly, and a
/// stuck one costs few wake-ups.
const REPEEK_MAX: Duration = Duration::from_millis(64);

/// Result of sniffing a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Starts like an HTTP/1.x request.
    Http1,
    /// Starts with the HTTP/2 connection preface.
    Http2,
    /// Anything else (or still undecided after the header timeout).
    Opaque,
    /// No byte within the sniff timeout.
    Silent,
    /// The client closed the connection before sending anything.
    Closed,
}

/// Classify the first bytes of a connection; `None` = undecided yet (the bytes
/// are a prefix of an HTTP/1.x request start).
pub(crate) fn classify(bytes: &[u8]) -> Option<Sniffed> {
    if bytes.starts_with(b"PRI ") {
        let n = bytes.len().min(H2_PREFACE.len());
        return match bytes[..n] == H2_PREFACE[..n] {
            true if n == H2_PREFACE.len() => Some(Sniffed::Http2),
            true => None,
            false => Some(Sniffed::Opaque),
        };
    }
    for (i, &c) in bytes.iter().enumerate() {
        if c == b' ' {
            return Some(if i == 0 {
                Sniffed::Opaque
            } else {
                Sniffed::Http1
            });
        }
        let token_char = c.is_ascii_uppercase() || (i > 0 && (c == b'-' || c == b'_'));
        if !token_char || i >= MAX_METHOD_LEN {
            return Some(Sniffed::Opaque);
        }
    }
    None
}

/// Peek at the client's bytes and classify them. No byte within
/// `first_byte` (the sniff timeout): silent.
/// Once a byte arrived, the bytes decide; still undecided `decide_within`
/// (the header timeout) after the first byte: opaque.
pub(crate) async fn sniff(
    stream: &TcpStream,
    first_byte: Duration,
    decide_within: Duration,
) -> io::Result<Sniffed> {
    let mut deadline = super::deadline_after(first_byte);
    let mut buf = [0u8; PEEK_LEN];
    let mut seen = 0;
    let mut pause = REPEEK_MIN;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_elapsed) if seen == 0 => return Ok(Sniffed::Silent),
            Err(_elapsed) => return Ok(Sniffed::Opaque),
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(Sniffed::Closed);
        }
        if let Some(decided) = classify(&buf[..n]) {
            return Ok(decided);
        }
        if seen == 0 {
            deadline = super::deadline_after(decide_within);
        }
        // Only a prefix of a method so far: peek returns at once while data
        // is queued, so wait before looking again, longer while nothing new
        // comes.
        pause = if n > seen {
            REPEEK_MIN
        } else {
            (pause * 2).min(REPEEK_MAX)
        };
        seen = n;
        let now = Instant::now();
        if now >= deadline {
            return Ok(Sniffed::Opaque);
        }
        tokio::time::sleep_until(deadline.min(now + pause)).await;
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
            assert_eq!(classify(m.as_bytes()), Some(Sniffed::Http1), "{m}");
        }
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Sniffed::Http1)
        );
    }

    #[test]
    fn classifies_the_h2_preface_and_waits_for_all_of_it() {
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(&H2_PREFACE[..4]), None);
    }

    #[test]
    fn classifies_prefixes_as_undecided() {
        for p in ["", "G", "GE", "GET", "POS", "M-SEARCH"] {
            assert_eq!(classify(p.as_bytes()), None, "{p:?}");
        }
    }

    #[test]
    fn classifies_opaque() {
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n\r\n"), Some(Sniffed::Opaque));
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

//! A small blocking HTTP/1.1 client for the agent's admin socket.
//!
//! One request per connection (`Connection: close`). Bodies are read by
//! `Content-Length`, by chunked transfer-encoding (decoded incrementally, so a
//! streamed `/trace` yields each line as soon as it arrives), or to the end of
//! the connection.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

use super::Error;
use crate::admin::api::ApiError;

/// How long a plain request may take before the CLI gives up.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Talks to the agent at one socket path.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    socket: PathBuf,
}

/// A response body, after the head.
pub(crate) type Body = Box<dyn BufRead>;

impl Client {
    /// A client for the socket at `socket`.
    pub(crate) fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// `GET path`, decoded as JSON.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.request("GET", path, None, Some(TIMEOUT))?;
        self.decode(path, body)
    }

    /// `POST path` with a JSON body, the answer decoded as JSON.
    pub(crate) fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let json = serde_json::to_vec(body).map_err(|source| Error::Decode {
            what: format!("the request to {path}"),
            source,
        })?;
        let body = self.request("POST", path, Some(&json), Some(TIMEOUT))?;
        self.decode(path, body)
    }

    /// `GET path` without a timeout: the body as it streams in.
    pub(crate) fn stream(&self, path: &str) -> Result<Body, Error> {
        self.request("GET", path, None, None)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, mut body: Body) -> Result<T, Error> {
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes).map_err(|e| self.io_error(e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            what: path.to_owned(),
            source,
        })
    }

    /// Sends one request; on a 2xx answer returns the body, otherwise the
    /// agent's error.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Body, Error> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|e| connect_error(&self.socket, e))?;
        let io = |e| self.io_error(e);
        stream.set_read_timeout(timeout).map_err(io)?;
        stream.set_write_timeout(timeout).map_err(io)?;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: laneway\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io)?;
        if let Some(body) = body {
            stream.write_all(body).map_err(io)?;
        }
        stream.flush().map_err(io)?;

        let mut reader = BufReader::new(stream);
        let response = read_head(&mut reader).map_err(|e| self.io_error(e))?;
        let mut body = response.body(reader);
        if (200..300).contains(&response.status) {
            return Ok(body);
        }
        let mut bytes = Vec::new();
        // An error body cut short still names the status.
        let _ = body.read_to_end(&mut bytes);
        Err(api_error(response.status, &response.reason, &bytes))
    }

    fn io_error(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                path: self.socket.clone(),
                after: TIMEOUT,
            },
            io::ErrorKind::InvalidData => Error::Protocol(e.to_string()),
            _ => Error::Io {
                path: self.socket.clone(),
                source: e,
            },
        }
    }
}

/// Maps a failed `connect` to the error people need to see.
pub(crate) fn connect_error(path: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotRunning {
            path: path.to_owned(),
        },
        io::ErrorKind::ConnectionRefused => Error::NotListening {
            path: path.to_owned(),
        },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            path: path.to_owned(),
        },
        _ => Error::Connect {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// The agent's error from a non-2xx answer: its `ApiError` message, else the
/// body as text, else the reason phrase.
pub(crate) fn api_error(status: u16, reason: &str, body: &[u8]) -> Error {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                reason.to_owned()
            } else {
                text
            }
        }
    };
    Error::Api { status, message }
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// Status code.
    pub(crate) status: u16,
    /// Reason phrase.
    pub(crate) reason: String,
    /// `Content-Length`, if given.
    pub(crate) content_length: Option<u64>,
    /// Whether the body is chunked.
    pub(crate) chunked: bool,
}

impl ResponseHead {
    /// The body that follows this head on `reader`.
    pub(crate) fn body<R: BufRead + 'static>(&self, reader: R) -> Body {
        if self.chunked {
            Box::new(BufReader::new(Chunked::new(reader)))
        } else if let Some(n) = self.content_length {
            Box::new(reader.take(n))
        } else {
            Box::new(reader)
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads and parses a response head, leaving the body in `reader`.
pub(crate) fn read_head<R: BufRead>(reader: &mut R) -> io::Result<ResponseHead> {
    let mut buf = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                invalid("the agent closed the connection without answering")
            } else {
                invalid("the agent closed the connection in the middle of its answer")
            });
        }
        if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") || buf == b"\r\n" {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("the response head is too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete response head")),
        Err(e) => return Err(invalid(format!("bad response head: {e}"))),
    }
    let status = response
        .code
        .ok_or_else(|| invalid("no status code in the response"))?;
    let mut head = ResponseHead {
        status,
        reason: response.reason.unwrap_or_default().to_owned(),
        content_length: None,
        chunked: false,
    };
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?;
            head.content_length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            head.chunked = value.split(',').any(|v| v.trim() == "chunked");
        }
    }
    Ok(head)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk.
    DataEnd,
    /// The last chunk and trailers were read.
    Done,
}

/// Decodes a chunked body, returning data as soon as it arrives.
#[derive(Debug)]
pub(crate) struct Chunked<R> {
    inner: R,
    state: ChunkState,
}

impl<R: BufRead> Chunked<R> {
    /// Decodes the chunked body read from `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            state: ChunkState::Size,
        }
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.inner)
            .take(MAX_CHUNK_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended in the middle of a chunked body",
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(invalid("chunk-size line too long"));
        }
        Ok(line)
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let line = self.line()?;
                    let text = String::from_utf8_lossy(&line);
                    let size_text = text.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
                    if size == 0 {
                        // Trailers, up to the empty line (or the end of the stream).
                        loop {
                            let mut trailer = Vec::new();
                            let n = (&mut self.inner)
                                .take(MAX_CHUNK_LINE as u64)
                                .read_until(b'\n', &mut trailer)?;
                            if n == 0 || trailer == b"\r\n" || trailer == b"\n" {
                                break;
                            }
                        }
                        self.state = ChunkState::Done;
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(0) => self.state = ChunkState::DataEnd,
                ChunkState::Data(left) => {
                    let available = self.inner.fill_buf()?;
                    if available.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the stream ended in the middle of a chunk",
                        ));
                    }
                    let n = available
                        .len()
                        .min(buf.len())
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    buf[..n].copy_from_slice(&available[..n]);
                    self.inner.consume(n);
                    self.state = ChunkState::Data(left - n as u64);
                    return Ok(n);
                }
                ChunkState::DataEnd => {
                    let line = self.line()?;
                    if line != b"\r\n" && line != b"\n" {
                        return Err(invalid("no CRLF after a chunk"));
                    }
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

/// Percent-encodes a query value (keeps unreserved characters, `/` and `:`).
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Chunked::new(io::Cursor::new(input.to_vec())).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunked_bodies_decode() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(decode_all(body).unwrap(), b"hello, world");
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap(), b"");
        // Lowercase hex and a bare LF.
        assert_eq!(decode_all(b"a\n0123456789\n0\n\n").unwrap(), b"0123456789");
    }

    #[test]
    fn chunked_errors() {
        let cut = decode_all(b"5\r\nhel").unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
        let no_end = decode_all(b"5\r\nhello\r\n").unwrap_err();
        assert_eq!(no_end.kind(), io::ErrorKind::UnexpectedEof);
        let bad = decode_all(b"zz\r\nhello\r\n").unwrap_err();
        assert_eq!(bad.kind(), io::ErrorKind::InvalidData);
        let no_crlf = decode_all(b"2\r\nhello\r\n").unwrap_err();
        assert_eq!(no_crlf.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn heads_parse() {
        let mut r = io::Cursor::new(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\nX: y\r\n\r\nabcdefgREST".to_vec(),
        );
        let head = read_head(&mut r).unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(head.reason, "Not Found");
        assert_eq!(head.content_length, Some(7));
        assert!(!head.chunked);
        let mut body = String::new();
        head.body(r).read_to_string(&mut body).unwrap();
        assert_eq!(body, "abcdefg");

        let mut r = io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        );
        let head = read_head(&mut r).unwrap();
        assert!(head.chunked);
        let mut body = String::new();
        head.body(r).read_to_string(&mut body).unwrap();
        assert_eq!(body, "abc");

        let mut empty = io::Cursor::new(Vec::new());
        assert_eq!(
            read_head(&mut empty).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut garbage = io::Cursor::new(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        assert_eq!(
            read_head(&mut garbage).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn api_errors_take_the_agent_message() {
        let e = api_error(404, "Not Found", br#"{"error":"no service named nope"}"#);
        assert_eq!(
            e.to_string(),
            "the agent answered 404: no service named nope"
        );
        let e = api_error(500, "Internal Server Error", b"boom\n");
        assert_eq!(e.to_string(), "the agent answered 500: boom");
        let e = api_error(502, "Bad Gateway", b"");
        assert_eq!(e.to_string(), "the agent answered 502: Bad Gateway");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("default/reviews"), "default/reviews");
        assert_eq!(encode_query("a b&c=d"), "a%20b%26c%3Dd");
    }
}

//! Message body framing (RFC 9112 §6, §7.1): how long a body is, a streaming
//! chunked decoder that finds the end of a chunked body (including chunk
//! extensions and trailers) without buffering it, and the copy loops that
//! forward a body verbatim or skip it.
//!
//! Bodies are never re-encoded: the bytes that belong to the message are
//! written to the destination exactly as received, and bytes after the end of
//! the message (a pipelined next request) stay in the source buffer.

use std::{io, time::Duration};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read granularity of the copy loops.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Body bytes already buffered up to this size are written together with the
/// head in a single write.
const COALESCE_MAX: usize = 16 * 1024;
/// Longest chunk extension accepted on a chunk-size line.
const MAX_CHUNK_EXT: usize = 4096;

/// Body framing and transfer errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Chunk-size line without hex digits or with a bad character.
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    /// Chunk size does not fit in 64 bits.
    #[error("chunk size too large")]
    ChunkSizeOverflow,
    /// Chunk extension longer than we accept.
    #[error("chunk extension too long")]
    ChunkExtTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not terminated by CRLF")]
    MissingChunkCrlf,
    /// Malformed trailer section.
    #[error("invalid chunked trailer")]
    InvalidTrailer,
    /// Reading the source failed.
    #[error("read: {0}")]
    Read(#[source] io::Error),
    /// The source closed before the end of the body.
    #[error("connection closed before end of body")]
    Eof,
    /// No bytes from the source within the I/O timeout.
    #[error("read timed out")]
    ReadTimeout,
    /// Writing the destination failed.
    #[error("write: {0}")]
    Write(#[source] io::Error),
    /// The destination accepted no bytes within the I/O timeout.
    #[error("write timed out")]
    WriteTimeout,
    /// A body being skipped is larger than we are willing to read.
    #[error("body too large to skip")]
    DrainLimit,
}

impl Error {
    /// Whether the error is on the destination (write) side.
    pub(crate) fn is_write_side(&self) -> bool {
        matches!(self, Error::Write(_) | Error::WriteTimeout)
    }

    /// Whether the error is a framing error of the message itself.
    pub(crate) fn is_framing(&self) -> bool {
        matches!(
            self,
            Error::InvalidChunkSize
                | Error::ChunkSizeOverflow
                | Error::ChunkExtTooLong
                | Error::MissingChunkCrlf
                | Error::InvalidTrailer
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size.
    Size,
    /// Whitespace after the size (only `;` or CR may follow).
    SizeWs,
    /// Inside chunk extensions, until CR.
    Ext,
    /// Saw CR ending the size line, expect LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expect CR after chunk data.
    DataCr,
    /// Expect LF after chunk data.
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR in a trailer line, expect LF.
    TrailerLf,
    /// Saw CR at the start of a line in the trailer section, expect LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Streaming decoder of the chunked transfer coding that only locates chunk
/// boundaries and the end of the body; the data is not copied.
///
/// Line terminators must be CRLF (bare LF is rejected: a proxy that is more
/// lenient than the server behind it enables request smuggling).
#[derive(Clone, Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
    ext_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub(crate) const fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            ext_len: 0,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume bytes of the body; returns how many of `data` belong to the
    /// body (all of them unless the end of the body is inside `data`).
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<usize, Error> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let avail = (data.len() - i) as u64;
                let n = avail.min(self.remaining);
                // n <= avail, which came from a usize.
                i += n as usize;
                self.remaining -= n;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let c = data[i];
            i += 1;
            self.state = match self.state {
                State::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 16 {
                            return Err(Error::ChunkSizeOverflow);
                        }
                        self.digits += 1;
                        self.size = (self.size << 4) | u64::from(hex_val(c));
                        State::Size
                    }
                    _ if self.digits == 0 => return Err(Error::InvalidChunkSize),
                    b';' => State::Ext,
                    b' ' | b'\t' => State::SizeWs,
                    b'\r' => State::SizeLf,
                    _ => return Err(Error::InvalidChunkSize),
                },
                State::SizeWs => match c {
                    b' ' | b'\t' => State::SizeWs,
                    b';' => State::Ext,
                    b'\r' => State::SizeLf,
                    _ => return Err(Error::InvalidChunkSize),
                },
                State::Ext => {
                    self.ext_len += 1;
                    if self.ext_len > MAX_CHUNK_EXT {
                        return Err(Error::ChunkExtTooLong);
                    }
                    match c {
                        b'\r' => State::SizeLf,
                        b'\t' => State::Ext,
                        c if c < 0x20 || c == 0x7f => return Err(Error::InvalidChunkSize),
                        _ => State::Ext,
                    }
                }
                State::SizeLf => {
                    if c != b'\n' {
                        return Err(Error::InvalidChunkSize);
                    }
                    let size = self.size;
                    self.size = 0;
                    self.digits = 0;
                    self.ext_len = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        self.remaining = size;
                        State::Data
                    }
                }
                State::DataCr => match c {
                    b'\r' => State::DataLf,
                    _ => return Err(Error::MissingChunkCrlf),
                },
                State::DataLf => match c {
                    b'\n' => State::Size,
                    _ => return Err(Error::MissingChunkCrlf),
                },
                State::TrailerStart => match c {
                    b'\r' => State::EndLf,
                    // Bare LF, or obs-fold continuation lines.
                    b'\n' | b' ' | b'\t' => return Err(Error::InvalidTrailer),
                    c if c < 0x20 || c == 0x7f => return Err(Error::InvalidTrailer),
                    _ => State::Trailer,
                },
                State::Trailer => match c {
                    b'\r' => State::TrailerLf,
                    b'\t' => State::Trailer,
                    c if c < 0x20 || c == 0x7f => return Err(Error::InvalidTrailer),
                    _ => State::Trailer,
                },
                State::TrailerLf => match c {
                    b'\n' => State::TrailerStart,
                    _ => return Err(Error::InvalidTrailer),
                },
                State::EndLf => match c {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i);
                    }
                    _ => return Err(Error::InvalidTrailer),
                },
                // Handled above / nothing more belongs to the body.
                State::Data => State::Data,
                State::Done => {
                    return Ok(i - 1);
                }
            };
        }
        Ok(i)
    }
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// How the end of a message body is found, and how much of it is left.
#[derive(Clone, Debug)]
pub(crate) enum Framing {
    /// No body (or nothing left of it).
    Empty,
    /// Exactly this many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(ChunkedDecoder),
    /// The body ends when the sender closes the connection (responses only).
    UntilClose,
}

impl Framing {
    /// Whether there is no body at all left to transfer.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(d) => d.is_done(),
            Framing::Length(_) | Framing::UntilClose => false,
        }
    }

    /// Account for the buffered bytes `avail`: returns how many of them belong
    /// to the body and whether the body is complete after them.
    fn advance(&mut self, avail: &[u8]) -> Result<(usize, bool), Error> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(rem) => {
                let n = (avail.len() as u64).min(*rem);
                *rem -= n;
                // n <= avail.len(), which is a usize.
                Ok((n as usize, *rem == 0))
            }
            Framing::Chunked(d) => {
                let n = d.feed(avail)?;
                Ok((n, d.is_done()))
            }
            Framing::UntilClose => Ok((avail.len(), false)),
        }
    }
}

async fn write_all_timeout<W>(dst: &mut W, data: &[u8], io_timeout: Duration) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    match tokio::time::timeout(io_timeout, dst.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Write(e)),
        Err(_) => Err(Error::WriteTimeout),
    }
}

/// Read more bytes from `src` into `buf`; `Ok(0)` is EOF.
pub(crate) async fn read_more<R>(
    src: &mut R,
    buf: &mut BytesMut,
    io_timeout: Duration,
) -> Result<usize, Error>
where
    R: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    match tokio::time::timeout(io_timeout, src.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Error::Read(e)),
        Err(_) => Err(Error::ReadTimeout),
    }
}

/// Write `prefix` (a message head; may be empty) and then the body described
/// by `framing` from `buf` + `src` to `dst`, verbatim.
///
/// Bytes already in `buf` are used first; bytes after the end of the body are
/// left in `buf`. Body bytes buffered together with the head are written in
/// the same write as `prefix` when small. `prefix` is left as it was.
/// Every single read and write is bounded by `io_timeout`.
pub(crate) async fn forward<R, W>(
    framing: &mut Framing,
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    prefix: &mut Vec<u8>,
    io_timeout: Duration,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let prefix_len = prefix.len();
    let mut prefix_pending = prefix_len > 0;
    loop {
        let (take, done) = framing.advance(buf)?;
        if prefix_pending {
            prefix_pending = false;
            if take <= COALESCE_MAX {
                prefix.extend_from_slice(&buf[..take]);
                let r = write_all_timeout(dst, prefix, io_timeout).await;
                prefix.truncate(prefix_len);
                r?;
            } else {
                write_all_timeout(dst, prefix, io_timeout).await?;
                write_all_timeout(dst, &buf[..take], io_timeout).await?;
            }
            buf.advance(take);
        } else if take > 0 {
            write_all_timeout(dst, &buf[..take], io_timeout).await?;
            buf.advance(take);
        }
        if done {
            *framing = Framing::Empty;
            return Ok(());
        }
        if read_more(src, buf, io_timeout).await? == 0 {
            if matches!(framing, Framing::UntilClose) {
                *framing = Framing::Empty;
                return Ok(());
            }
            return Err(Error::Eof);
        }
    }
}

/// Read and discard the body described by `framing` (at most `limit` bytes).
pub(crate) async fn drain<R>(
    framing: &mut Framing,
    src: &mut R,
    buf: &mut BytesMut,
    limit: u64,
    io_timeout: Duration,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
{
    match framing {
        Framing::Length(n) if *n > limit => return Err(Error::DrainLimit),
        Framing::UntilClose => return Err(Error::DrainLimit),
        _ => {}
    }
    let mut total: u64 = 0;
    loop {
        let (take, done) = framing.advance(buf)?;
        buf.advance(take);
        if done {
            *framing = Framing::Empty;
            return Ok(());
        }
        total += take as u64;
        if total > limit {
            return Err(Error::DrainLimit);
        }
        if read_more(src, buf, io_timeout).await? == 0 {
            return Err(Error::Eof);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(usize, bool), Error> {
        let mut d = ChunkedDecoder::new();
        let n = d.feed(input)?;
        Ok((n, d.is_done()))
    }

    fn decode_bytewise(input: &[u8]) -> Result<(usize, bool), Error> {
        let mut d = ChunkedDecoder::new();
        let mut total = 0;
        for b in input {
            total += d.feed(std::slice::from_ref(b))?;
            if d.is_done() {
                break;
            }
        }
        Ok((total, d.is_done()))
    }

    #[test]
    fn chunked_finds_end_and_leaves_rest() {
        let body = b"5\r\nhello\r\n6;ext=1;x=\"q\"\r\n world\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        assert_eq!(decode_all(&input).unwrap(), (body.len(), true));
        assert_eq!(decode_bytewise(&input).unwrap(), (body.len(), true));
    }

    #[test]
    fn chunked_with_trailers_and_upper_hex() {
        let body = b"A\r\n0123456789\r\n0\r\nx-sum: 1\r\nx-other: two\r\n\r\n";
        assert_eq!(decode_all(body).unwrap(), (body.len(), true));
        assert_eq!(decode_bytewise(body).unwrap(), (body.len(), true));
        let mut input = body.to_vec();
        input.push(b'Z');
        assert_eq!(decode_all(&input).unwrap(), (body.len(), true));
    }

    #[test]
    fn chunked_incomplete_is_not_done() {
        for cut in [1, 3, 5, 8, 10, 12] {
            let body = b"3\r\nabc\r\n0\r\n\r\n";
            assert_eq!(decode_all(&body[..cut]).unwrap(), (cut, false), "cut {cut}");
        }
    }

    #[test]
    fn chunked_size_with_whitespace_before_ext() {
        let body = b"3 ;a=b\r\nabc\r\n0  \r\n\r\n";
        assert_eq!(decode_all(body).unwrap(), (body.len(), true));
    }

    #[test]
    fn chunked_rejects_bad_input() {
        let bad: &[&[u8]] = &[
            b"\r\n",                  // no digits
            b"g\r\n",                 // not hex
            b"3\nabc\r\n0\r\n\r\n",   // bare LF after size
            b"3\r\nabcd\r\n",         // data longer than size
            b"3\r\nabc\n0\r\n\r\n",   // bare LF after data
            b"0\r\n\n",               // bare LF at end
            b"0\r\nx: y\n\r\n",       // bare LF in trailer
            b"0\r\n folded\r\n\r\n",  // obs-fold in trailer
            b"11111111111111111\r\n", // 17 hex digits
            b"-1\r\n",                // sign
            b"3 x\r\n",               // garbage after whitespace
            b"3;a\x00b\r\n",          // control char in extension
        ];
        for input in bad {
            assert!(
                decode_all(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(
                decode_bytewise(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunked_large_size_streams_without_buffering() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"ffffffffffffffff\r\n").unwrap(), 18);
        let data = vec![0u8; 1 << 16];
        for _ in 0..16 {
            assert_eq!(d.feed(&data).unwrap(), data.len());
        }
        assert!(!d.is_done());
    }

    #[test]
    fn length_framing_counts_down() {
        let mut f = Framing::Length(5);
        assert_eq!(f.advance(b"abc").unwrap(), (3, false));
        assert_eq!(f.advance(b"defgh").unwrap(), (2, true));
        assert!(f.is_empty());
        let mut e = Framing::Empty;
        assert_eq!(e.advance(b"xyz").unwrap(), (0, true));
    }

    #[tokio::test]
    async fn forward_writes_head_and_body_leaving_pipelined_bytes() {
        let mut framing = Framing::Chunked(ChunkedDecoder::new());
        let mut buf = BytesMut::from(&b"2\r\nhi\r\n"[..]);
        let rest: &[u8] = b"0\r\nt: 1\r\n\r\nNEXT";
        let mut src = rest;
        let mut out = Vec::new();
        let mut prefix = b"HEAD\r\n\r\n".to_vec();
        forward(
            &mut framing,
            &mut src,
            &mut buf,
            &mut out,
            &mut prefix,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(out, b"HEAD\r\n\r\n2\r\nhi\r\n0\r\nt: 1\r\n\r\n");
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(prefix, b"HEAD\r\n\r\n");
    }

    #[tokio::test]
    async fn forward_reports_premature_eof() {
        let mut framing = Framing::Length(10);
        let mut buf = BytesMut::new();
        let mut src: &[u8] = b"short";
        let mut out = Vec::new();
        let err = forward(
            &mut framing,
            &mut src,
            &mut buf,
            &mut out,
            &mut Vec::new(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Eof));
        assert_eq!(out, b"short");
    }

    #[tokio::test]
    async fn forward_until_close_ends_at_eof() {
        let mut framing = Framing::UntilClose;
        let mut buf = BytesMut::from(&b"ab"[..]);
        let mut src: &[u8] = b"cdef";
        let mut out = Vec::new();
        forward(
            &mut framing,
            &mut src,
            &mut buf,
            &mut out,
            &mut b"H".to_vec(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(out, b"Habcdef");
    }

    #[tokio::test]
    async fn drain_respects_limit() {
        let mut buf = BytesMut::new();
        let mut src: &[u8] = b"0123456789rest";
        let mut f = Framing::Length(10);
        drain(&mut f, &mut src, &mut buf, 100, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&buf[..], b"rest");
        let mut f = Framing::Length(1000);
        let err = drain(&mut f, &mut src, &mut buf, 100, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DrainLimit));
    }
}

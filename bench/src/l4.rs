//! L4 in the benchmark: an opaque (non-HTTP) protocol on the `stream`
//! service, which every proxy can only pass through. The endpoints run
//! [`backend`]; the load is [`client`], run inside the client pod as
//! `laneway-bench l4-load`.
//!
//! The protocol is client-first, so a sniffing proxy decides at once: the
//! client sends [`hello`] (a NUL byte, which no HTTP request starts with,
//! then the mode), then
//! - [`Mode::RoundTrip`]: [`MESSAGE_LEN`]-byte messages, each echoed back
//!   before the next goes (request/response, like a database protocol);
//! - [`Mode::Bulk`]: nothing more; the endpoint writes [`CHUNK_LEN`]-byte
//!   chunks until the client closes (a download);
//! - [`Mode::Name`]: the endpoint answers its name and a newline, and
//!   closes (the routing check).

pub mod backend;
pub mod client;

use std::{
    io::{Read, Write},
    net::SocketAddr,
};

use anyhow::{Context, Result, bail};
use laneway_tests::node::Pod;

/// Bytes of one round-trip message.
pub const MESSAGE_LEN: usize = 64;
/// Bytes of one bulk write.
pub const CHUNK_LEN: usize = 64 * 1024;

/// What a connection asks of the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Echo fixed-size messages, one at a time.
    RoundTrip,
    /// Stream data to the client until it closes.
    Bulk,
    /// Answer the endpoint's name.
    Name,
}

impl Mode {
    /// Its byte in the hello.
    fn byte(self) -> u8 {
        match self {
            Mode::RoundTrip => b'r',
            Mode::Bulk => b'b',
            Mode::Name => b'n',
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        [Mode::RoundTrip, Mode::Bulk, Mode::Name]
            .into_iter()
            .find(|m| m.byte() == byte)
    }
}

/// The first bytes of every connection.
pub fn hello(mode: Mode) -> [u8; 8] {
    [0, b'L', b'W', b'L', b'4', mode.byte(), 0, 0]
}

/// The mode a connection's first bytes ask for, if they are a hello.
fn parse_hello(bytes: &[u8; 8]) -> Option<Mode> {
    match bytes {
        [0, b'L', b'W', b'L', b'4', mode, 0, 0] => Mode::from_byte(*mode),
        _ => None,
    }
}

/// Which endpoint answers an L4 connection from `pod` to `vip`.
pub fn endpoint_name(pod: &Pod, vip: SocketAddr) -> Result<String> {
    let mut conn = laneway_tests::client::connect(pod, vip)?;
    conn.write_all(&hello(Mode::Name))?;
    let mut name = String::new();
    conn.read_to_string(&mut name)
        .context("read the endpoint's name")?;
    match name.strip_suffix('\n') {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => bail!("not a name: {name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_its_mode_and_starts_like_no_http_request() {
        for mode in [Mode::RoundTrip, Mode::Bulk, Mode::Name] {
            let hello = hello(mode);
            assert_eq!(parse_hello(&hello), Some(mode));
            assert_eq!(hello[0], 0, "a NUL byte: opaque to every sniffer");
        }
        assert_eq!(parse_hello(b"GET / HT"), None);
    }
}

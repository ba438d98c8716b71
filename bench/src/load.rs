//! The load: the workloads, run by real load generators inside the client
//! pod ([`oha`] for HTTP/1.1, [`h2load`] for HTTP/2 and gRPC), and a holder
//! of idle keep-alive connections.

mod h2load;
mod oha;

pub use h2load::RATE_CONNECTIONS as H2_RATE_CONNECTIONS;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use laneway_tests::client::connect;

use crate::{
    l4,
    topology::{BenchNode, TAG},
};

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// HTTP/1.1 `GET`s of the `reviews` service.
    Http1 {
        /// Keep connections open (else one connection per request).
        keep_alive: bool,
        /// Ask for the 16 KiB answer (else the few-byte one).
        large: bool,
    },
    /// HTTP/1.1 keep-alive `GET`s of the small answer on this many
    /// connections at full speed, whatever `--connections` says: 256 (many
    /// clients) or 1 (one request at a time: pure latency).
    Http1Connections(u32),
    /// h2c `GET /small` of the `echo` service, many streams per connection.
    Http2Small,
    /// Unary gRPC calls of the `echo` service (h2c).
    GrpcUnary,
    /// 64-byte round trips of an opaque protocol (`stream` service), which
    /// a proxy can only pass through.
    L4RoundTrip,
    /// A download over the opaque protocol, as fast as it goes.
    L4Bulk,
}

impl Workload {
    /// All of them, in report order.
    pub const ALL: [Workload; 10] = [
        Workload::Http1 {
            keep_alive: true,
            large: false,
        },
        Workload::Http1 {
            keep_alive: true,
            large: true,
        },
        Workload::Http1 {
            keep_alive: false,
            large: false,
        },
        Workload::Http1 {
            keep_alive: false,
            large: true,
        },
        Workload::Http1Connections(256),
        Workload::Http1Connections(1),
        Workload::Http2Small,
        Workload::GrpcUnary,
        Workload::L4RoundTrip,
        Workload::L4Bulk,
    ];

    /// Its name in the report.
    pub fn name(self) -> String {
        match self {
            Workload::Http1 { keep_alive, large } => format!(
                "{}, {}",
                if keep_alive {
                    "keep-alive"
                } else {
                    "new connection"
                },
                if large { "16 KiB" } else { "small" }
            ),
            Workload::Http1Connections(1) => "keep-alive, small, 1 connection".into(),
            Workload::Http1Connections(n) => format!("keep-alive, small, {n} connections"),
            Workload::Http2Small => "h2c, small".into(),
            Workload::GrpcUnary => "gRPC unary".into(),
            Workload::L4RoundTrip => "L4 round trips, 64 bytes".into(),
            Workload::L4Bulk => "L4 bulk download".into(),
        }
    }

    /// Its short name for `--workloads`.
    pub fn slug(self) -> &'static str {
        match self {
            Workload::Http1 {
                keep_alive: true,
                large: false,
            } => "keepalive-small",
            Workload::Http1 {
                keep_alive: true,
                large: true,
            } => "keepalive-16k",
            Workload::Http1 {
                keep_alive: false,
                large: false,
            } => "newconn-small",
            Workload::Http1 {
                keep_alive: false,
                large: true,
            } => "newconn-16k",
            Workload::Http1Connections(1) => "keepalive-1conn",
            Workload::Http1Connections(_) => "keepalive-256conn",
            Workload::Http2Small => "h2-small",
            Workload::GrpcUnary => "grpc-unary",
            Workload::L4RoundTrip => "l4-rr",
            Workload::L4Bulk => "l4-bulk",
        }
    }

    /// What it speaks.
    pub fn protocol(self) -> Protocol {
        match self {
            Workload::Http1 { .. } | Workload::Http1Connections(_) => Protocol::Http1,
            Workload::Http2Small | Workload::GrpcUnary => Protocol::Http2,
            Workload::L4RoundTrip | Workload::L4Bulk => Protocol::L4,
        }
    }

    /// What the report counts: HTTP/1.1 requests, HTTP/2 streams, L4 round
    /// trips or MiB.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::L4Bulk => "MiB",
            Workload::L4RoundTrip => "round trips",
            _ if self.protocol() == Protocol::Http2 => "streams",
            _ => "req",
        }
    }

    /// Whether it has a fixed-rate run (a download has no rate of
    /// requests).
    pub fn has_fixed_rate(self) -> bool {
        self != Workload::L4Bulk
    }

    /// Its pace at full speed, from the command line's.
    pub fn flat(self, connections: u32, streams: u32) -> Pace {
        let connections = match self {
            Workload::Http1Connections(n) => n,
            _ => connections,
        };
        Pace::Flat {
            connections,
            streams,
        }
    }
}

/// What a workload speaks, which decides the service it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, to `reviews`.
    Http1,
    /// HTTP/2 (h2c) and gRPC, to `echo`.
    Http2,
    /// The opaque protocol, to `stream`.
    L4,
}

/// How hard to push.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as `connections` concurrent connections go (each with up to
    /// `streams` concurrent streams over HTTP/2).
    Flat {
        /// Concurrent connections.
        connections: u32,
        /// Concurrent streams per HTTP/2 connection.
        streams: u32,
    },
    /// A fixed rate.
    Rate {
        /// Requests per second.
        per_second: u32,
    },
}

/// What one load generator run measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Requests (streams) answered in full with a 200.
    pub ok: u64,
    /// Requests per second.
    pub per_second: f64,
    /// Latency percentiles, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

impl Measured {
    /// A run that was not made: no latency.
    pub fn none() -> Self {
        Self {
            ok: 0,
            per_second: f64::NAN,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            p999_us: f64::NAN,
        }
    }
}

/// Runs `workload` at `pace` for `duration` from the `client` pod to its
/// service's VIP, every request with the tag header. Fails if any request
/// failed.
pub fn run(
    bench: &BenchNode,
    client: usize,
    workload: Workload,
    pace: Pace,
    duration: Duration,
) -> Result<Measured> {
    match workload {
        Workload::Http1 { keep_alive, large } => {
            oha::run(bench, client, keep_alive, large, pace, duration)
        }
        Workload::Http1Connections(_) => oha::run(bench, client, true, false, pace, duration),
        Workload::Http2Small => h2load::run(bench, client, h2load::Call::Small, pace, duration),
        Workload::GrpcUnary => h2load::run(bench, client, h2load::Call::Grpc, pace, duration),
        Workload::L4RoundTrip => {
            l4::client::run(bench, client, l4::Mode::RoundTrip, pace, duration)
        }
        Workload::L4Bulk => l4::client::run(bench, client, l4::Mode::Bulk, pace, duration),
    }
}

/// Opens `count` connections from the `client` pod to the HTTP/1.1 VIP,
/// sends one tagged request on each (so the proxy holds its state for a
/// live keep-alive connection) and keeps them open, idle, until dropped.
/// One file descriptor each: the open-files limit may not be much above
/// `count`.
pub fn idle_connections(bench: &BenchNode, client: usize, count: usize) -> Result<Vec<TcpStream>> {
    let pod = bench.node.pod(client);
    let request = format!(
        "GET /small HTTP/1.1\r\nhost: {}\r\nx-mse-tag: {TAG}\r\n\r\n",
        bench.vip()
    );
    let mut conns = Vec::with_capacity(count);
    let mut buf = [0u8; 4096];
    for i in 0..count {
        let mut conn =
            connect(pod, bench.vip()).with_context(|| format!("idle connection {i} of {count}"))?;
        conn.write_all(request.as_bytes())?;
        // The small answer arrives in one segment: a head and a few bytes.
        let n = conn.read(&mut buf)?;
        if !buf[..n].starts_with(b"HTTP/1.1 200") {
            bail!(
                "idle connection {i}: {:?}",
                String::from_utf8_lossy(&buf[..n.min(200)])
            );
        }
        conns.push(conn);
    }
    Ok(conns)
}

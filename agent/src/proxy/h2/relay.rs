//! One direction of an HTTP/2 stream relayed to another stream: DATA with
//! end-to-end flow control, then trailers.
//!
//! Capacity is reserved on the sending stream before each piece is sent, and
//! the received bytes' window is released to the sender only once they were
//! handed on: a slow reader on one side stops the writer on the other, and
//! the router holds at most one window per stream.

use std::{future::poll_fn, task::Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use super::grpc;

/// Why a relay stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The receiving side failed (reset by its peer, connection lost).
    #[error("receiving: {0}")]
    Recv(#[source] h2::Error),
    /// The sending side failed (its connection lost).
    #[error("sending: {0}")]
    Send(#[source] h2::Error),
    /// The peer of the sending side reset the stream.
    #[error("reset by the peer with {0}")]
    Reset(h2::Reason),
}

impl Error {
    /// The reason to reset the other side's stream with.
    pub(crate) fn reason(&self) -> h2::Reason {
        match self {
            Error::Recv(e) | Error::Send(e) => e.reason().unwrap_or(h2::Reason::CANCEL),
            Error::Reset(reason) => *reason,
        }
    }
}

/// A request body handed on is kept up to this size, so that a stream the
/// upstream refused can be sent again on another connection.
const KEEP_MAX: u64 = 64 * 1024;

/// What a relay handed on so far: how much, whether it ended, and (while
/// small, when asked) the data itself, to send it again.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// DATA bytes handed on.
    pub bytes: u64,
    /// END_STREAM was handed on (without trailers).
    pub ended: bool,
    /// Everything handed on is in `kept`.
    keeping: bool,
    kept: Vec<Bytes>,
    /// `grpc-status` of the trailers handed on, if any.
    pub grpc_status: Option<u32>,
}

impl Sent {
    /// Keeps what is handed on while it is small.
    pub(crate) fn keeping() -> Self {
        Self {
            keeping: true,
            ..Self::default()
        }
    }

    fn record(&mut self, data: &Bytes, end: bool) {
        self.bytes += data.len() as u64;
        self.ended |= end;
        if self.keeping && self.bytes > KEEP_MAX {
            self.keeping = false;
            self.kept = Vec::new();
        } else if self.keeping && !data.is_empty() {
            self.kept.push(data.clone());
        }
    }

    /// Whether everything handed on can be sent again ([`Sent::replay`]):
    /// the body so far is small and had no trailers.
    pub(crate) fn replayable(&self) -> bool {
        self.keeping
    }

    /// Sends what was handed on so far again, on another stream.
    pub(crate) async fn replay(&self, to: &mut SendStream<Bytes>) -> Result<(), Error> {
        let last = self.kept.len().saturating_sub(1);
        for (i, data) in self.kept.iter().enumerate() {
            send(to, data.clone(), self.ended && i == last).await?;
        }
        if self.ended && self.kept.is_empty() {
            send(to, Bytes::new(), true).await?;
        }
        Ok(())
    }
}

/// What happened first: data on the receiving side, or a reset of the
/// sending side.
enum Step<T> {
    Received(T),
    Reset(Result<h2::Reason, h2::Error>),
}

/// Waits for `poll` on the receiving side, or a reset of `to`.
async fn next<T>(
    to: &mut SendStream<Bytes>,
    mut poll: impl FnMut(&mut std::task::Context<'_>) -> Poll<T>,
) -> Step<T> {
    poll_fn(|cx| {
        if let Poll::Ready(reset) = to.poll_reset(cx) {
            return Poll::Ready(Step::Reset(reset));
        }
        poll(cx).map(Step::Received)
    })
    .await
}

fn reset_error(reset: Result<h2::Reason, h2::Error>) -> Error {
    match reset {
        Ok(reason) => Error::Reset(reason),
        Err(e) => Error::Send(e),
    }
}

/// Sends `data` on `to` as its capacity allows; `end` ends the stream with
/// the last piece.
async fn send(to: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), Error> {
    if data.is_empty() {
        if end {
            to.send_data(data, true).map_err(Error::Send)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        match poll_fn(|cx| to.poll_capacity(cx)).await {
            None => return Err(Error::Reset(h2::Reason::CANCEL)),
            Some(Err(e)) => return Err(Error::Send(e)),
            Some(Ok(0)) => {}
            Some(Ok(n)) => {
                let piece = data.split_to(n.min(data.len()));
                to.send_data(piece, end && data.is_empty())
                    .map_err(Error::Send)?;
            }
        }
    }
    Ok(())
}

/// Relays everything `from` receives to `to`, ending `to` as `from` ended
/// (END_STREAM or trailers). `sent` records what was handed on as it goes,
/// so a caller whose relay was cut short knows what was.
pub(crate) async fn forward(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    sent: &mut Sent,
) -> Result<(), Error> {
    loop {
        let data = match next(to, |cx| from.poll_data(cx)).await {
            Step::Reset(reset) => return Err(reset_error(reset)),
            Step::Received(None) => break,
            Step::Received(Some(Err(e))) => return Err(Error::Recv(e)),
            Step::Received(Some(Ok(data))) => data,
        };
        let len = data.len();
        let end = from.is_end_stream();
        send(to, data.clone(), end).await?;
        // The window goes back to the sender only once the bytes went on.
        from.flow_control()
            .release_capacity(len)
            .map_err(Error::Recv)?;
        sent.record(&data, end);
        if end {
            return Ok(());
        }
    }
    match next(to, |cx| from.poll_trailers(cx)).await {
        Step::Reset(reset) => Err(reset_error(reset)),
        Step::Received(Err(e)) => Err(Error::Recv(e)),
        Step::Received(Ok(Some(trailers))) => {
            sent.grpc_status = grpc::status(&trailers);
            sent.keeping = false;
            sent.kept = Vec::new();
            to.send_trailers(trailers).map_err(Error::Send)?;
            Ok(())
        }
        Step::Received(Ok(None)) => {
            to.send_data(Bytes::new(), true).map_err(Error::Send)?;
            sent.record(&Bytes::new(), true);
            Ok(())
        }
    }
}

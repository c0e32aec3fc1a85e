//! `H2Stream`: one CONNECT tunnel as a byte stream. Owns the HTTP/2 flow-control bookkeeping
//! (capacity is released as the reader consumes bytes; writes wait for send capacity), not the
//! connection, which a server loop or client driver task keeps polling.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::StreamSlot;

/// A bidirectional byte stream over one HTTP/2 CONNECT stream.
///
/// Reading returns the peer's DATA frames and EOF at END_STREAM; `poll_shutdown` sends
/// END_STREAM. Dropping it before both directions finish resets the stream (CANCEL).
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received bytes not yet handed to a reader; their flow-control capacity is still held.
    pub(crate) read_buf: Bytes,
    pub(crate) read_eof: bool,
    pub(crate) write_closed: bool,
    /// Counts the stream against its client connection while alive; `None` on the server side.
    pub(crate) _slot: Option<StreamSlot>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: Option<StreamSlot>) -> Self {
        Self {
            send,
            recv,
            read_buf: Bytes::new(),
            read_eof: false,
            write_closed: false,
            _slot: slot,
        }
    }

    /// The HTTP/2 stream id, for logs.
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Polls for the next chunk the peer sent. `Ok(None)` is END_STREAM (or a NO_ERROR reset,
    /// which means the peer is done). Capacity is not released here: callers release it as they
    /// consume the bytes.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if self.read_eof {
                return Poll::Ready(Ok(None));
            }
            match ready!(self.recv.poll_data(cx)) {
                None => self.read_eof = true,
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => return Poll::Ready(Ok(Some(chunk))),
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.read_eof = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
    }

    /// Returns `n` bytes of receive window to the peer.
    pub(crate) fn release(&mut self, n: usize) {
        // Fails only if the stream is already gone, in which case there is nothing to return.
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// Waits until the stream may send at least one byte and returns how many (≤ `want`).
    pub(crate) fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(want)));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(self.closed_error(cx))),
            }
        }
    }

    /// Sends END_STREAM (idempotent).
    pub(crate) fn finish_send(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.write_closed {
            return Ok(());
        }
        self.write_closed = true;
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Ok(()),
            // A peer that already reset with NO_ERROR is done with us; closing is moot.
            Err(_) if self.reset_reason(cx) == Some(Reason::NO_ERROR) => Ok(()),
            Err(e) => Err(h2_to_io(e)),
        }
    }

    /// Resets the stream with CONNECT_ERROR: the TCP connection behind the tunnel failed
    /// (RFC 9113 §8.5), which a peer reports as an error rather than a clean close.
    pub(crate) fn abort(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }

    pub(crate) fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.send.send_data(chunk, false).map_err(h2_to_io)
    }

    /// Resolves when the peer resets the stream (with its reason) or the connection fails
    /// (with an error).
    pub(crate) fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Reason>> {
        self.send.poll_reset(cx).map_err(h2_to_io)
    }

    /// The reason the peer reset the stream, if it did.
    fn reset_reason(&mut self, cx: &mut Context<'_>) -> Option<Reason> {
        match self.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Some(reason),
            _ => None,
        }
    }

    /// The error for a send side h2 reports as gone: the peer's reset reason if there is one.
    fn closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.reset_reason(cx) {
            Some(reason) => io::Error::new(io::ErrorKind::ConnectionReset, h2::Error::from(reason)),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed for sending"),
        }
    }
}

/// h2 errors as io errors: transport errors unwrapped, stream resets as `ConnectionReset` so
/// copy loops treat them like a TCP RST.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HBONE transport error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_buf.is_empty() {
            match ready!(this.poll_chunk(cx))? {
                Some(chunk) => this.read_buf = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.read_buf.len().min(buf.remaining());
        buf.put_slice(&this.read_buf[..n]);
        this.read_buf.advance(n);
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send_chunk(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data handed to h2 is written by the connection task; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish_send(cx))
    }
}

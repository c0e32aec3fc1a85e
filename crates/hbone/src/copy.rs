//! The data path: copying between a socket and an `H2Stream` in both directions at once, with
//! half-close propagated. Socket reads land in a `BytesMut` whose filled part is frozen and handed
//! to h2 without a copy; received DATA frames are written to the socket as they are.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::stream::H2Stream;

/// First read size for a stream; doubles while reads fill the buffer, so idle or chatty tunnels
/// hold little memory and bulk transfers reach `MAX_READ` quickly.
const INITIAL_READ: usize = 16 * 1024;
/// Largest socket read: 256 KiB keeps syscalls per byte low at multi-Gbit/s while staying well
/// under the 4 MiB stream window, so several reads are in flight before the window closes.
const MAX_READ: usize = 256 * 1024;
/// Below this much spare room a new buffer is reserved instead of issuing a tiny read.
const MIN_SPARE: usize = 4 * 1024;

/// A copy that failed part-way, with what it had moved by then (so metrics and access logs count
/// the bytes of an aborted tunnel too).
#[derive(Debug, thiserror::Error)]
#[error("tunnel copy failed after {socket_to_stream} bytes up and {stream_to_socket} bytes down")]
pub struct CopyError {
    pub socket_to_stream: u64,
    pub stream_to_socket: u64,
    #[source]
    pub source: io::Error,
}

impl CopyError {
    /// The underlying I/O error's kind (a reset shows as `ConnectionReset`).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Copies `socket` → `stream` and `stream` → `socket` until both directions finish.
///
/// EOF from the socket sends END_STREAM; END_STREAM from the peer shuts down the socket's write
/// side. Returns `(bytes socket→stream, bytes stream→socket)`. An error in either direction ends
/// both and resets the stream with CONNECT_ERROR so the peer sees an abort, not a clean close;
/// the error still carries the byte counts.
pub async fn copy_bidirectional<T>(socket: &mut T, stream: H2Stream) -> Result<(u64, u64), CopyError>
where
    T: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut copy = Copy {
        stream,
        upload: Upload::new(),
        download: Download::new(),
    };
    match poll_fn(|cx| copy.poll(cx, &mut *socket)).await {
        Ok(counts) => Ok(counts),
        Err(source) => {
            copy.stream.abort();
            Err(CopyError {
                socket_to_stream: copy.upload.bytes,
                stream_to_socket: copy.download.bytes,
                source,
            })
        }
    }
}

struct Copy {
    stream: H2Stream,
    upload: Upload,
    download: Download,
}

impl Copy {
    fn poll<T>(&mut self, cx: &mut Context<'_>, socket: &mut T) -> Poll<io::Result<(u64, u64)>>
    where
        T: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        // Poll both even if one is pending so each registers its wakers.
        let up = self.upload.poll(cx, socket, &mut self.stream)?;
        let down = self.download.poll(cx, socket, &mut self.stream)?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((self.upload.bytes, self.download.bytes))),
            _ => Poll::Pending,
        }
    }
}

/// socket → h2.
struct Upload {
    buf: BytesMut,
    read_size: usize,
    eof: bool,
    done: bool,
    bytes: u64,
}

impl Upload {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            read_size: INITIAL_READ,
            eof: false,
            done: false,
            bytes: 0,
        }
    }

    fn poll<T>(&mut self, cx: &mut Context<'_>, socket: &mut T, stream: &mut H2Stream) -> Poll<io::Result<()>>
    where
        T: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.buf.is_empty() {
                let n = ready!(stream.poll_send_capacity(cx, self.buf.len()))?;
                stream.send_chunk(self.buf.split_to(n).freeze())?;
                self.bytes += n as u64;
                continue;
            }
            if self.eof {
                stream.finish_send(cx)?;
                self.done = true;
                continue;
            }
            if self.buf.capacity() < MIN_SPARE {
                self.buf.reserve(self.read_size);
            }
            let spare = self.buf.capacity();
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut *socket), cx, &mut self.buf) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // While the socket is quiet, notice a peer that gave up on the stream or a
                    // connection that died, so a half-closed tunnel does not wait forever.
                    return match ready!(stream.poll_reset(cx))? {
                        // NO_ERROR: the peer needs no more data (it already finished its side).
                        Reason::NO_ERROR => {
                            self.done = true;
                            Poll::Ready(Ok(()))
                        }
                        reason => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            h2::Error::from(reason),
                        ))),
                    };
                }
            };
            if n == 0 {
                self.eof = true;
            } else if n == spare && self.read_size < MAX_READ {
                self.read_size *= 2;
            }
        }
    }
}

/// h2 → socket.
struct Download {
    /// A received chunk partly written to the socket.
    pending: Bytes,
    /// Bytes written since the last flush (TLS sockets buffer writes).
    unflushed: bool,
    done: bool,
    bytes: u64,
}

impl Download {
    fn new() -> Self {
        Self {
            pending: Bytes::new(),
            unflushed: false,
            done: false,
            bytes: 0,
        }
    }

    fn poll<T>(&mut self, cx: &mut Context<'_>, socket: &mut T, stream: &mut H2Stream) -> Poll<io::Result<()>>
    where
        T: AsyncWrite + Unpin + ?Sized,
    {
        if self.pending.is_empty() {
            // Bytes an earlier AsyncRead user left behind come first.
            self.pending = std::mem::take(&mut stream.read_buf);
        }
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut *socket).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                stream.release(n);
                self.bytes += n as u64;
                self.unflushed = true;
                continue;
            }
            match stream.poll_chunk(cx)? {
                Poll::Ready(Some(chunk)) => self.pending = chunk,
                Poll::Ready(None) => {
                    ready!(Pin::new(&mut *socket).poll_shutdown(cx))?;
                    self.done = true;
                }
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *socket).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

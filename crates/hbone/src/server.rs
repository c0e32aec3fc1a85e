//! The HBONE server side: one HTTP/2 connection's accept loop. It owns the abuse limits, the
//! parsing of each CONNECT, 400s for malformed ones, keepalive and graceful shutdown; what to do
//! with a valid CONNECT (policy, dialing the target) belongs to the caller's handler.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::error::Error;
use crate::request::{ConnectRequest, Refusal};
use crate::stream::H2Stream;
use crate::{h2_limits, keepalive};

/// Limits and timers for serving one HBONE connection.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS, and the number of handler tasks one connection may run.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes a client may send on one stream before we read them.
    pub initial_stream_window: u32,
    /// Connection-level receive window: bytes in flight across all streams.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE. Over it h2 answers 431; over 4× it ends the connection.
    pub max_header_list_size: u32,
    /// Bytes h2 queues per stream before a write waits for the socket.
    pub max_send_buffer_size: usize,
    /// Streams reset by the client before we accepted them; more ends the connection with
    /// ENHANCE_YOUR_CALM (the HTTP/2 rapid-reset attack, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we had to reset for the client's protocol errors; more ends the connection.
    pub max_local_error_reset_streams: usize,
    /// How often to PING an idle or busy client; zero disables keepalive.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// How long the client has to send the HTTP/2 preface after the caller's TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            // Above any sane pool's streams per connection (ours defaults to 100) so the server
            // is never the bottleneck; each stream is only a little state plus its handler task.
            max_concurrent_streams: 1000,
            // Window and frame sizes as Istio ztunnel: 4 MiB per stream keeps one stream at line
            // rate across a datacenter RTT; 16 MiB per connection bounds memory a client can
            // make us buffer; 1 MiB frames cut per-frame overhead on bulk transfers.
            initial_stream_window: 4 * 1024 * 1024,
            initial_connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            // A CONNECT carries :authority, forwarded, baggage (W3C caps it at 8 KiB) and
            // traceparent; 16 KiB is ample and bounds HPACK decoding work.
            max_header_list_size: 16 * 1024,
            // One full-size frame may wait for the socket per stream.
            max_send_buffer_size: 1024 * 1024,
            // h2/hyper use 20; honest clients only reset a CONNECT whose app socket closed while
            // it was in flight, so 100 leaves room for bursts and still stops a flood early.
            max_pending_accept_reset_streams: 100,
            // h2's default; an honest client makes almost none.
            max_local_error_reset_streams: 1024,
            // Istio ztunnel's keepalive: PING every 10 s, give up after 20 s.
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a stream or connection was refused, reported to the observer (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// A request whose method is not CONNECT (answered 400).
    NotConnect,
    /// A CONNECT without `:authority` (answered 400).
    MissingAuthority,
    /// A CONNECT whose `:authority` is not `ip:port` with a nonzero port (answered 400).
    BadAuthority,
    /// A connection-level protocol violation (rapid reset, oversized headers, bad frames): the
    /// connection was ended with GOAWAY.
    ProtocolError,
    /// The client stopped answering keepalive PINGs; the connection was dropped.
    KeepaliveTimeout,
    /// The client did not complete the HTTP/2 handshake.
    HandshakeFailed,
}

impl Rejection {
    /// The metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotConnect => "not_connect",
            Self::MissingAuthority => "missing_authority",
            Self::BadAuthority => "bad_authority",
            Self::ProtocolError => "protocol_error",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::HandshakeFailed => "handshake_failed",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CONNECT that parsed. The handler answers it once, with [`accept`](Self::accept) or
/// [`refuse`](Self::refuse); dropping it unanswered resets the stream.
pub struct IncomingConnect {
    request: ConnectRequest,
    headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl std::fmt::Debug for IncomingConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnect")
            .field("request", &self.request)
            .field("stream_id", &self.stream_id())
            .finish()
    }
}

impl IncomingConnect {
    /// The parsed CONNECT.
    pub fn request(&self) -> &ConnectRequest {
        &self.request
    }

    /// All request headers, for callers that need more than [`ConnectRequest`] carries.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The HTTP/2 stream id, for logs.
    pub fn stream_id(&self) -> u32 {
        self.respond.stream_id().as_u32()
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, Error> {
        let send = self
            .respond
            .send_response(response(StatusCode::OK), false)
            .map_err(|e| Error::Respond(Arc::new(e)))?;
        Ok(H2Stream::new(send, self.recv, None))
    }

    /// Answers with the refusal's status and END_STREAM. A client that already reset the stream
    /// gets nothing, which is fine.
    pub fn refuse(mut self, refusal: Refusal) {
        let _ = self.respond.send_response(response(refusal.status()), true);
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Serves one HBONE connection until it ends.
///
/// Runs the HTTP/2 server handshake on `io`, answers malformed requests 400 (reporting them to
/// `observer`) and runs `handler` for each valid CONNECT on its own task. At most
/// `max_concurrent_streams` handler tasks run at once, even if the client resets streams to open
/// more. PINGs every `keepalive_interval`; a client silent for `keepalive_timeout` is dropped.
/// When `shutdown` resolves, sends GOAWAY and keeps serving in-flight streams until they end;
/// drop the returned future to close the connection at once.
///
/// Returns `Ok` when the connection closed cleanly, `Err` on handshake failure, keepalive
/// timeout, or a protocol or transport error.
pub async fn serve_connection<IO, H, F>(
    io: IO,
    settings: &ServerSettings,
    handler: H,
    observer: Arc<dyn Fn(Rejection) + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    H: Fn(IncomingConnect) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut conn = match handshake(io, settings).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HBONE handshake failed");
            observer(Rejection::HandshakeFailed);
            return Err(e);
        }
    };
    let keepalive = keepalive::expired(
        conn.ping_pong(),
        settings.keepalive_interval,
        settings.keepalive_timeout,
    );
    tokio::pin!(keepalive, shutdown);
    let mut draining = false;
    let slots = Arc::new(Semaphore::new(settings.max_concurrent_streams.max(1) as usize));
    loop {
        tokio::select! {
            next = next_stream(&mut conn, &slots) => match next {
                Next::Stream(request, respond, slot) => {
                    dispatch(request, respond, slot, &handler, observer.as_ref());
                }
                Next::Closed(Ok(())) => return Ok(()),
                // A client that got our GOAWAY may hang up before h2 finishes writing to it.
                Next::Closed(Err(e)) if draining && e.is_io() => return Ok(()),
                Next::Closed(Err(e)) => {
                    if e.is_go_away() && e.is_library() {
                        tracing::debug!(error = %e, "HBONE client violated HTTP/2; sent GOAWAY");
                        observer(Rejection::ProtocolError);
                    } else {
                        tracing::debug!(error = %e, "HBONE connection failed");
                    }
                    return Err(Error::Connection(Arc::new(e)));
                }
            },
            () = &mut shutdown, if !draining => {
                tracing::debug!("HBONE connection draining: sent GOAWAY");
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut keepalive => {
                tracing::debug!(
                    timeout = ?settings.keepalive_timeout,
                    "HBONE client stopped answering PINGs; dropping connection"
                );
                observer(Rejection::KeepaliveTimeout);
                return Err(Error::KeepaliveTimeout(settings.keepalive_timeout));
            }
        }
    }
}

async fn handshake<IO>(io: IO, settings: &ServerSettings) -> Result<h2::server::Connection<IO, Bytes>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(h2_limits::window(settings.initial_stream_window))
        .initial_connection_window_size(h2_limits::window(settings.initial_connection_window))
        .max_frame_size(h2_limits::frame_size(settings.max_frame_size))
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(h2_limits::send_buffer(settings.max_send_buffer_size))
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams));
    match tokio::time::timeout(settings.handshake_timeout, builder.handshake(io)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::Handshake(Arc::new(e))),
        Err(_elapsed) => Err(Error::HandshakeTimeout(settings.handshake_timeout)),
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "lives on the accept loop's stack and is moved once; boxing would allocate per stream"
)]
enum Next {
    Stream(Request<RecvStream>, SendResponse<Bytes>, OwnedSemaphorePermit),
    Closed(Result<(), h2::Error>),
}

/// The next stream, once a handler slot is free. While every slot is busy the connection is
/// still driven (in-flight streams progress, PINGs are answered), but new streams wait in h2's
/// accept queue, where the reset-stream limit applies to them.
async fn next_stream<IO>(conn: &mut h2::server::Connection<IO, Bytes>, slots: &Arc<Semaphore>) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            tracing::debug!("all HBONE handler slots busy; holding new streams");
            tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    // The semaphore is never closed; treat it as the connection ending.
                    Err(_) => return Next::Closed(Ok(())),
                },
                closed = poll_fn(|cx| conn.poll_closed(cx)) => return Next::Closed(closed),
            }
        }
    };
    match conn.accept().await {
        Some(Ok((request, respond))) => Next::Stream(request, respond, slot),
        Some(Err(e)) => Next::Closed(Err(e)),
        None => Next::Closed(Ok(())),
    }
}

fn dispatch<H, F>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    slot: OwnedSemaphorePermit,
    handler: &H,
    observer: &(dyn Fn(Rejection) + Send + Sync),
) where
    H: Fn(IncomingConnect) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let parsed = ConnectRequest::from_http(&request);
    let (parts, recv) = request.into_parts();
    match parsed {
        Ok(connect) => {
            let incoming = IncomingConnect {
                request: connect,
                headers: parts.headers,
                respond,
                recv,
            };
            let task = handler(incoming);
            tokio::spawn(
                async move {
                    task.await;
                    drop(slot);
                }
                .in_current_span(),
            );
        }
        Err(rejection) => {
            tracing::debug!(
                %rejection,
                method = %parts.method,
                uri = %parts.uri,
                stream_id = respond.stream_id().as_u32(),
                "malformed HBONE request; answering 400"
            );
            observer(rejection);
            let _ = respond.send_response(response(StatusCode::BAD_REQUEST), true);
        }
    }
}

//! The HBONE client side: one HTTP/2 connection to a peer, shared by clones, opening a CONNECT
//! stream per tunnel. Owns the connection driver task, keepalive and stream accounting; choosing
//! and reusing connections per destination is the [`pool`](crate::pool)'s job.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::Error;
use crate::request::ConnectRequest;
use crate::stream::H2Stream;
use crate::{h2_limits, keepalive};

/// Limits and timers for one client connection. Sizes mean the same as in
/// [`ServerSettings`](crate::server::ServerSettings), for the data we receive.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes the server may send on one stream before we read.
    pub initial_stream_window: u32,
    /// Connection-level receive window.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE for responses.
    pub max_header_list_size: u32,
    /// Bytes h2 queues per stream before a write waits for the socket.
    pub max_send_buffer_size: usize,
    /// Streams we may open before the server's SETTINGS arrive; after that the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS applies and further CONNECTs wait for a free stream.
    pub max_concurrent_streams: usize,
    /// How often to PING the server; zero disables keepalive.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        // Same sizes and timers as the server defaults, for the same reasons.
        Self {
            initial_stream_window: 4 * 1024 * 1024,
            initial_connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_header_list_size: 16 * 1024,
            max_send_buffer_size: 1024 * 1024,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// One HBONE client connection. Clones share it; the HTTP/2 connection is driven by a spawned
/// task that ends when the connection does. Dropping every clone and every stream closes it.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.is_closed())
            .field("active_streams", &self.active_streams())
            .finish()
    }
}

struct Shared {
    /// `None` once closed; each CONNECT clones it. Only handles hold it, never the driver or the
    /// streams, so h2 ends the connection when the handles and the streams are gone.
    send: Mutex<Option<SendRequest<Bytes>>>,
    state: Arc<State>,
}

/// What the driver task and the streams share with the handles.
pub(crate) struct State {
    /// Set when the connection can take no new streams: closed by us, ended, or refused by GOAWAY.
    pub(crate) closed: watch::Sender<bool>,
    /// Streams open or being opened, including reservations the pool made.
    pub(crate) active: watch::Sender<usize>,
}

/// Counts one stream against its connection until dropped.
pub(crate) struct StreamSlot {
    state: Arc<State>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Connection {
    /// Runs the HTTP/2 client handshake on `io` (already TLS-secured by the caller) and spawns
    /// the connection driver.
    pub async fn handshake<IO>(io: IO, settings: &ClientSettings) -> Result<Self, Error>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(h2_limits::window(settings.initial_stream_window))
            .initial_connection_window_size(h2_limits::window(settings.initial_connection_window))
            .max_frame_size(h2_limits::frame_size(settings.max_frame_size))
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(h2_limits::send_buffer(settings.max_send_buffer_size))
            .initial_max_send_streams(settings.max_concurrent_streams)
            // HBONE servers never push; a PUSH_PROMISE is then a protocol error.
            .enable_push(false);
        let (send, mut conn) = builder
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| Error::Handshake(Arc::new(e)))?;
        let state = Arc::new(State {
            closed: watch::Sender::new(false),
            active: watch::Sender::new(0),
        });
        let keepalive = keepalive::expired(
            conn.ping_pong(),
            settings.keepalive_interval,
            settings.keepalive_timeout,
        );
        let driver_state = state.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    result = &mut conn => match result {
                        Ok(()) => tracing::debug!("HBONE client connection closed"),
                        Err(e) => tracing::debug!(error = %e, "HBONE client connection failed"),
                    },
                    () = keepalive => {
                        tracing::debug!("HBONE server stopped answering PINGs; dropping connection");
                    }
                }
                driver_state.closed.send_replace(true);
            }
            .in_current_span(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                send: Mutex::new(Some(send)),
                state,
            }),
        })
    }

    /// Opens a tunnel: sends CONNECT and waits for the answer. A non-200 answer is an
    /// [`Error::Refused`] whose [`status`](Error::status) is the code.
    pub async fn connect(&self, request: &ConnectRequest) -> Result<H2Stream, Error> {
        let slot = self.reserve();
        self.connect_reserved(slot, request).await
    }

    /// True once the connection takes no new streams.
    pub fn is_closed(&self) -> bool {
        *self.shared.state.closed.borrow() || self.lock_send().is_none()
    }

    /// Streams open or being opened on this connection.
    pub fn active_streams(&self) -> usize {
        *self.shared.state.active.borrow()
    }

    /// Closes gracefully: no new streams; the connection ends once open streams finish.
    pub fn close(&self) {
        self.lock_send().take();
        self.shared.state.closed.send_replace(true);
    }

    /// True if both handles share one connection.
    pub(crate) fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    pub(crate) fn state(&self) -> &State {
        &self.shared.state
    }

    /// Counts a stream against this connection before it is opened, so concurrent pool users
    /// see it at once.
    pub(crate) fn reserve(&self) -> StreamSlot {
        self.shared.state.active.send_modify(|n| *n += 1);
        StreamSlot {
            state: self.shared.state.clone(),
        }
    }

    pub(crate) async fn connect_reserved(&self, slot: StreamSlot, request: &ConnectRequest) -> Result<H2Stream, Error> {
        let target = request.target;
        let http_request = request.to_http()?;
        let send = self.lock_send().clone().ok_or(Error::ConnectionClosed)?;
        // Waits while the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
        let mut send = send.ready().await.map_err(|e| self.closed_by(&e))?;
        let (response, stream) = send.send_request(http_request, false).map_err(|e| self.closed_by(&e))?;
        let response = response.await.map_err(|e| {
            // A GOAWAY that excludes this stream means the server never processed it.
            if e.is_go_away() {
                self.closed_by(&e)
            } else {
                Error::Stream {
                    target,
                    source: Arc::new(e),
                }
            }
        })?;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused {
                target,
                status: response.status(),
            });
        }
        Ok(H2Stream::new(stream, response.into_body(), Some(slot)))
    }

    /// Marks the connection unusable after h2 refused a new stream on it.
    fn closed_by(&self, e: &h2::Error) -> Error {
        tracing::debug!(error = %e, "HBONE connection refuses new streams; marking closed");
        self.shared.state.closed.send_replace(true);
        Error::ConnectionClosed
    }

    fn lock_send(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<Bytes>>> {
        self.shared.send.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! The HTTP/1.1 server: accepts loopback connections, hands each request to `api::respond`, and
//! owns the state shared by all connections. Stops when the emulator handle is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::store::State;

/// A response body: a whole JSON document or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything the request handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) clock: Clock,
    pub(crate) api_audiences: Vec<String>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) address: SocketAddr,
    /// Bumped to end every open watch (after a compaction, so they resume into `410 Gone`).
    pub(crate) watch_epoch: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(
        address: SocketAddr,
        history: usize,
        api_audiences: Vec<String>,
        bookmark_interval: Duration,
    ) -> Self {
        Shared {
            state: Mutex::new(State::new(history)),
            clock: Clock::default(),
            api_audiences,
            bookmark_interval,
            address,
            watch_epoch: watch::Sender::new(0),
        }
    }

    /// Locks the state. A handler that panicked while holding the lock cannot have left a
    /// half-written object (writes are single `commit`s), so a poisoned lock is recovered.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves connections on `listener` until `shutdown` fires.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(crate::api::respond(&shared, request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// A JSON response with the given status code.
pub(crate) fn json_response(code: u16, body: &Value) -> http::Response<Body> {
    bytes_response(code, "application/json", Bytes::from(body.to_string()))
}

pub(crate) fn bytes_response(code: u16, content_type: &str, body: Bytes) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// The `Status` response of a failed request.
pub(crate) fn error_response(error: &ApiError) -> http::Response<Body> {
    json_response(error.code(), &error.to_status())
}

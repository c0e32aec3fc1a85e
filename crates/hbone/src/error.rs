//! The crate's error type. Every variant is cheap to clone so a failed dial can be handed to all
//! callers waiting on it; messages name the peer address or limit at hand, never repeat the source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// Why an HBONE operation failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer did not complete the HTTP/2 handshake (connection preface and SETTINGS) in time.
    #[error("HTTP/2 handshake did not complete within {0:?}; check that the peer speaks HBONE (h2)")]
    HandshakeTimeout(Duration),
    /// The HTTP/2 handshake failed: the peer sent something other than an HTTP/2 preface, or the
    /// transport failed.
    #[error("HTTP/2 handshake failed; check that the peer negotiated ALPN h2")]
    Handshake(#[source] Arc<h2::Error>),
    /// The HTTP/2 connection failed after the handshake (protocol violation, GOAWAY, I/O error).
    #[error("HBONE connection failed")]
    Connection(#[source] Arc<h2::Error>),
    /// The peer did not answer a keepalive PING in time; the connection was dropped.
    #[error("peer did not answer a keepalive PING within {0:?}; connection dropped")]
    KeepaliveTimeout(Duration),
    /// The connection is closed or closing (GOAWAY); no new streams can be opened on it.
    #[error("HBONE connection is closed; open a new one")]
    ConnectionClosed,
    /// The CONNECT stream to `target` failed before or after its response.
    #[error("CONNECT stream to {target} failed")]
    Stream {
        /// The tunnel target named in `:authority`.
        target: SocketAddr,
        /// What h2 reported.
        #[source]
        source: Arc<h2::Error>,
    },
    /// The peer answered the CONNECT to `target` with a non-200 status.
    #[error("CONNECT to {target} refused with status {status}")]
    Refused {
        /// The tunnel target named in `:authority`.
        target: SocketAddr,
        /// The status the peer answered with (400, 401, 503 in Istio's use).
        status: StatusCode,
    },
    /// A request field cannot be sent as an HTTP/2 header value.
    #[error("CONNECT request field `{field}` is not a valid HTTP header value")]
    InvalidHeader {
        /// The offending `ConnectRequest` field.
        field: &'static str,
    },
    /// Answering an incoming CONNECT failed, usually because the client already reset it.
    #[error("answering the CONNECT failed; the client may have reset the stream")]
    Respond(#[source] Arc<h2::Error>),
    /// Dialing the transport (TCP + TLS) for a new pooled connection failed.
    #[error("dialing the HBONE peer failed")]
    Dial(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The transport failed.
    #[error("I/O error on the HBONE transport")]
    Io(#[source] Arc<std::io::Error>),
}

impl Error {
    /// The HTTP status the peer refused a CONNECT with, if that is what happened.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Wraps any error from a dial (TCP connect, TLS handshake, identity check).
    pub fn dial(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Dial(Arc::from(source.into()))
    }

    /// True if the connection could not carry a new stream; the request never reached the peer,
    /// so retrying on another connection is safe.
    pub fn is_connection_closed(&self) -> bool {
        matches!(self, Self::ConnectionClosed)
    }

    /// True if a keepalive PING went unanswered.
    pub fn is_keepalive_timeout(&self) -> bool {
        matches!(self, Self::KeepaliveTimeout(_))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

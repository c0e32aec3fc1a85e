//! HBONE: TCP tunnelled through HTTP/2 CONNECT streams, the wire protocol of Istio ambient.
//!
//! This crate owns the HTTP/2 side: the CONNECT request and its headers, the server accept loop
//! with its abuse limits and keepalive, the client connection, a multiplexing connection pool and
//! the byte copy between a TCP socket and a tunnel stream. It does not own TLS, identities or
//! policy: callers hand it an already-secured `AsyncRead + AsyncWrite` and decide, per CONNECT,
//! whether to accept or refuse.

pub mod client;
mod copy;
mod error;
mod h2_limits;
mod keepalive;
pub mod pool;
mod request;
pub mod server;
mod stream;

pub use copy::{CopyError, copy_bidirectional};
pub use error::Error;
pub use request::{ConnectRequest, Refusal};
pub use stream::H2Stream;

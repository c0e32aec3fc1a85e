//! In-memory tests of the HBONE crate: client and server over `tokio::io::duplex`, no TLS.
//! Raw HTTP/2 frames stand in for misbehaving peers where the h2 client would refuse.

mod support;

mod abuse;
mod keepalive;
mod pool;
mod refusals;
mod shutdown;
mod tunnel;

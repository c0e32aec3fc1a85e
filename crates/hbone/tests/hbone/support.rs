//! Shared test fixtures: an in-memory HBONE server with an echo upstream, an observer that
//! records rejections, and a minimal raw HTTP/2 frame writer/reader for misbehaving peers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ambit_hbone::server::{IncomingConnect, Rejection, ServerSettings, serve_connection};
use ambit_hbone::{ConnectRequest, Error, copy_bidirectional};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Big enough that a test's writes never block on the pipe itself.
pub const PIPE: usize = 1024 * 1024;

/// Records every rejection the server reports.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<Rejection>>>);

impl Seen {
    pub fn observer(&self) -> Arc<dyn Fn(Rejection) + Send + Sync> {
        let seen = self.0.clone();
        Arc::new(move |r| seen.lock().expect("observer lock").push(r))
    }

    pub fn all(&self) -> Vec<Rejection> {
        self.0.lock().expect("observer lock").clone()
    }
}

/// A served connection: the client's end of the pipe and handles on the server.
pub struct Served {
    pub client_io: DuplexStream,
    pub server: JoinHandle<Result<(), Error>>,
    pub seen: Seen,
    pub shutdown: Option<oneshot::Sender<()>>,
}

/// Serves one in-memory connection with `handler`.
pub fn serve<H, F>(settings: ServerSettings, handler: H) -> Served
where
    H: Fn(IncomingConnect) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (client_io, server_io) = tokio::io::duplex(PIPE);
    let seen = Seen::default();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let observer = seen.observer();
    let server = tokio::spawn(async move {
        let shutdown = async {
            // A dropped sender means "never shut down".
            if shutdown_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        serve_connection(server_io, &settings, handler, observer, shutdown).await
    });
    Served {
        client_io,
        server,
        seen,
        shutdown: Some(shutdown_tx),
    }
}

/// Accepts every CONNECT and echoes the tunnel's bytes through an in-memory upstream, using
/// `copy_bidirectional` as ztunnel's inbound path would.
pub async fn echo(incoming: IncomingConnect) {
    let Ok(stream) = incoming.accept() else {
        return;
    };
    let (mut proxy_side, upstream) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(upstream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let _ = copy_bidirectional(&mut proxy_side, stream).await;
}

/// An echo handler that also reports each request it saw.
pub fn recording_echo(
    tx: mpsc::UnboundedSender<(ConnectRequest, http::HeaderMap)>,
) -> impl Fn(IncomingConnect) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync {
    move |incoming| {
        let _ = tx.send((incoming.request().clone(), incoming.headers().clone()));
        Box::pin(echo(incoming))
    }
}

/// Counts live handler tasks, to prove none leak.
#[derive(Clone, Default)]
pub struct Live(Arc<AtomicUsize>);

impl Live {
    pub fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn target() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([10, 0, 0, 7], 8080))
}

/// A deterministic, non-repeating-looking payload.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

// ---- Raw HTTP/2 (RFC 9113 §4.1 framing, RFC 7541 HPACK literals) ----

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM / GOAWAY error codes (RFC 9113 §7).
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Appends one frame.
pub fn frame(buf: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame fits");
    buf.extend_from_slice(&len.to_be_bytes()[1..]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&stream.to_be_bytes());
    buf.extend_from_slice(payload);
}

/// An HPACK "literal without indexing, indexed name" field (RFC 7541 §6.2.2) for a static-table
/// name (`:authority` = 1, `:method` = 2) and a short value.
fn literal(block: &mut Vec<u8>, static_index: u8, value: &str) {
    block.push(static_index);
    block.push(u8::try_from(value.len()).expect("short value"));
    block.extend_from_slice(value.as_bytes());
}

/// A CONNECT header block, with `:authority` only if given.
pub fn connect_block(authority: Option<&str>) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, 2, "CONNECT");
    if let Some(authority) = authority {
        literal(&mut block, 1, authority);
    }
    block
}

/// Preface plus an empty SETTINGS frame.
pub fn client_start() -> Vec<u8> {
    let mut buf = PREFACE.to_vec();
    frame(&mut buf, SETTINGS, 0, 0, &[]);
    buf
}

#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// Reads one frame; `None` at EOF.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<RawFrame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(RawFrame {
        kind: head[3],
        stream,
        payload,
    })
}

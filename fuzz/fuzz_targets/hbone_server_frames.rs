//! The HBONE server reads HTTP/2 frames from any client that passed TLS: whatever it sends, the
//! accept loop must not panic and must end. Each input is the client's byte stream after the
//! connection preface (prepended here so the fuzzer starts at the first frame), preceded by one
//! byte choosing how the handler and the client behave.
//!
//! The runtime's clock is paused, so the short timers below (handshake, keepalive, graceful
//! shutdown, the per-input limit) fire in virtual time and a stalled connection costs nothing.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::Refusal;
use ambit_hbone::server::{IncomingConnect, ServerSettings, serve_connection};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// RFC 9113 §3.4: the client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Virtual time the client waits after its last byte before it half-closes.
const CLOSE_DELAY: Duration = Duration::from_millis(1);
/// Virtual time one input may take; longer than every server timer below.
const INPUT_LIMIT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
struct Mode(u8);

impl Mode {
    /// What the handler does with a valid CONNECT: refuse, accept and drop, or accept and echo.
    fn handler(self) -> u8 {
        (self.0 & 0x03) % 3
    }
    /// Whether the client half-closes soon after its bytes (else it stays silent, so keepalive
    /// runs).
    fn client_closes(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// Whether the server is asked to drain (GOAWAY) while the client is still talking.
    fn graceful_shutdown(self) -> bool {
        self.0 & 0x08 != 0
    }
}

fn settings() -> ServerSettings {
    ServerSettings {
        max_concurrent_streams: 4,
        max_pending_accept_reset_streams: 4,
        max_local_error_reset_streams: 4,
        keepalive_interval: Duration::from_millis(10),
        keepalive_timeout: Duration::from_millis(20),
        handshake_timeout: Duration::from_millis(20),
        ..ServerSettings::default()
    }
}

async fn handle(mode: Mode, incoming: IncomingConnect) {
    match mode.handler() {
        0 => incoming.refuse(Refusal::Unauthorized),
        1 => drop(incoming.accept()),
        _ => {
            if let Ok(mut stream) = incoming.accept() {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown().await;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frames)) = data.split_first() else {
        return;
    };
    let mode = Mode(mode);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let mut input = Vec::with_capacity(PREFACE.len() + frames.len());
    input.extend_from_slice(PREFACE);
    input.extend_from_slice(frames);

    runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        // Drain what the server writes so it never blocks on a full pipe.
        tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut client_read, &mut sink).await;
        });
        tokio::spawn(async move {
            if client_write.write_all(&input).await.is_err() {
                return;
            }
            if mode.client_closes() {
                // Not at once: h2 drops streams it has not handed out yet when it reads EOF, so
                // let the server take in every frame first.
                tokio::time::sleep(CLOSE_DELAY).await;
                let _ = client_write.shutdown().await;
            } else {
                // Keep the write half open so the server waits on a silent client.
                std::future::pending::<()>().await;
            }
        });
        let shutdown = async move {
            if mode.graceful_shutdown() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let settings = settings();
        let serve = serve_connection(
            server,
            &settings,
            move |incoming| handle(mode, incoming),
            Arc::new(|_rejection| {}),
            shutdown,
        );
        // A server still running at the limit with a silent client is fine (its handler may be
        // echoing an open stream); a hang in real time is caught by libFuzzer's -timeout.
        let _ = tokio::time::timeout(INPUT_LIMIT, serve).await;
    });
});

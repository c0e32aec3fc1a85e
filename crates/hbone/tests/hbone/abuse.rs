//! Misbehaving clients: oversized headers, rapid reset, bad frames, handler floods. Each must
//! end cleanly: the server future returns, the observer hears why, no handler task leaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_hbone::ConnectRequest;
use ambit_hbone::client::{ClientSettings, Connection};
use ambit_hbone::server::{Rejection, ServerSettings};
use http::{Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::support::{self, ENHANCE_YOUR_CALM, GOAWAY, HEADERS, Live, RST_STREAM, serve, target};

const DEADLINE: Duration = Duration::from_secs(10);

async fn wait_until(condition: impl Fn() -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

fn connect_with_header(name: &str, len: usize) -> anyhow::Result<Request<()>> {
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(target().to_string().parse()?);
    let mut http_request = Request::new(());
    *http_request.method_mut() = http::Method::CONNECT;
    *http_request.uri_mut() = http::Uri::from_parts(parts)?;
    http_request
        .headers_mut()
        .insert(http::HeaderName::from_bytes(name.as_bytes())?, "x".repeat(len).parse()?);
    Ok(http_request)
}

/// Over 4× SETTINGS_MAX_HEADER_LIST_SIZE h2 stops decoding and ends the connection.
#[tokio::test]
async fn huge_header_list_ends_the_connection() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let (mut send, conn) = h2::client::handshake(served.client_io).await?;
    tokio::spawn(conn);
    let (response, _body) = send.send_request(connect_with_header("x-big", 100 * 1024)?, true)?;
    let err = response.await.expect_err("connection ended");
    assert!(err.is_go_away() || err.is_io(), "{err:?}");
    let result = tokio::time::timeout(DEADLINE, served.server).await??;
    assert!(result.is_err(), "server reports the violation");
    assert_eq!(served.seen.all(), [Rejection::ProtocolError]);
    Ok(())
}

/// Between the limit and 4× it, h2 answers that stream 431 itself and the connection lives on.
/// The request never reaches us, so the observer hears nothing.
#[tokio::test]
async fn oversized_header_list_gets_431_and_connection_survives() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let (send, conn) = h2::client::handshake(served.client_io).await?;
    tokio::spawn(conn);
    let mut send = send.ready().await?;
    let (response, _body) = send.send_request(connect_with_header("x-big", 20 * 1024)?, true)?;
    assert_eq!(response.await?.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let mut send = send.ready().await?;
    let (response, _body) = send.send_request(connect_with_header("x-ok", 10)?, false)?;
    assert_eq!(response.await?.status(), StatusCode::OK);
    assert!(served.seen.all().is_empty());
    Ok(())
}

/// CVE-2023-44487: open and immediately reset 10k streams. h2 counts resets of streams not yet
/// accepted and sends GOAWAY(ENHANCE_YOUR_CALM); the server returns and no handler outlives it.
#[tokio::test]
async fn rapid_reset_flood_ends_the_connection() -> anyhow::Result<()> {
    let live = Live::default();
    let handler_live = live.clone();
    let served = serve(ServerSettings::default(), move |incoming| {
        let guard = handler_live.enter();
        async move {
            let _guard = guard;
            support::echo(incoming).await;
        }
    });
    let (mut r, mut w) = tokio::io::split(served.client_io);
    let mut flood = support::client_start();
    let block = support::connect_block(Some("10.0.0.7:8080"));
    for i in 0..10_000u32 {
        let stream = 2 * i + 1;
        support::frame(&mut flood, HEADERS, support::END_HEADERS, stream, &block);
        support::frame(&mut flood, RST_STREAM, 0, stream, &support::CANCEL.to_be_bytes());
    }
    let writer = tokio::spawn(async move {
        // The server hangs up part way; later writes failing is the point.
        let _ = w.write_all(&flood).await;
        w
    });

    let goaway = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = support::read_frame(&mut r).await {
            if frame.kind == GOAWAY {
                return Some(frame);
            }
        }
        None
    })
    .await?
    .expect("server sent GOAWAY");
    assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM));

    let result = tokio::time::timeout(DEADLINE, served.server).await??;
    assert!(result.is_err());
    assert_eq!(served.seen.all(), [Rejection::ProtocolError]);
    drop(writer.await?);
    wait_until(|| live.count() == 0).await?;
    Ok(())
}

/// A frame HTTP/2 forbids (DATA on stream 0, RFC 9113 §6.1) is a connection error.
#[tokio::test]
async fn bad_frame_is_a_protocol_error() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let (mut r, mut w) = tokio::io::split(served.client_io);
    let mut buf = support::client_start();
    support::frame(&mut buf, support::DATA, 0, 0, b"nope");
    w.write_all(&buf).await?;
    let goaway = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = support::read_frame(&mut r).await {
            if frame.kind == GOAWAY {
                return Some(frame);
            }
        }
        None
    })
    .await?
    .expect("server sent GOAWAY");
    assert_eq!(goaway.error_code(), Some(0x1), "PROTOCOL_ERROR");
    let result = tokio::time::timeout(DEADLINE, served.server).await??;
    assert!(result.is_err());
    assert_eq!(served.seen.all(), [Rejection::ProtocolError]);
    Ok(())
}

/// Resetting streams frees HTTP/2 concurrency but not our handler slots: at most
/// `max_concurrent_streams` handlers run, the rest wait in h2's queue.
#[tokio::test]
async fn handlers_are_capped_even_when_streams_are_reset() -> anyhow::Result<()> {
    let settings = ServerSettings {
        max_concurrent_streams: 10,
        // High enough that this test sees the cap, not the reset-flood GOAWAY.
        max_pending_accept_reset_streams: 1000,
        ..ServerSettings::default()
    };
    let live = Live::default();
    let peak = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = watch::channel(false);
    let (handler_live, handler_peak) = (live.clone(), peak.clone());
    let served = serve(settings, move |incoming| {
        let guard = handler_live.enter();
        handler_peak.fetch_max(handler_live.count(), Ordering::SeqCst);
        let mut release = release_rx.clone();
        async move {
            let _guard = guard;
            let _ = release.wait_for(|r| *r).await;
            drop(incoming);
        }
    });
    let (_r, mut w) = tokio::io::split(served.client_io);
    let block = support::connect_block(Some("10.0.0.7:8080"));
    // Ten streams fill every handler slot.
    let mut buf = support::client_start();
    for stream in (1..20u32).step_by(2) {
        support::frame(&mut buf, HEADERS, support::END_HEADERS, stream, &block);
    }
    w.write_all(&buf).await?;
    wait_until(|| live.count() == 10).await?;
    // Resetting them frees HTTP/2 concurrency, so ten more streams are legal, twice over.
    for round in 0..2u32 {
        let mut buf = Vec::new();
        let first = 21 + 40 * round;
        for stream in (first - 20..first).step_by(2) {
            support::frame(&mut buf, RST_STREAM, 0, stream, &support::CANCEL.to_be_bytes());
        }
        for stream in (first..first + 20).step_by(2) {
            support::frame(&mut buf, HEADERS, support::END_HEADERS, stream, &block);
        }
        w.write_all(&buf).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(peak.load(Ordering::SeqCst), 10, "round {round}");
    }

    release_tx.send_replace(true);
    wait_until(|| live.count() == 0).await?;
    assert_eq!(peak.load(Ordering::SeqCst), 10, "never more than the cap");
    Ok(())
}

/// The crate's own client against a server whose handler refuses nothing still works after all
/// of the above limits are configured (sanity check of the defaults).
#[tokio::test]
async fn defaults_admit_honest_clients() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(conn.connect(&ConnectRequest::new(target())).await?);
    }
    assert_eq!(conn.active_streams(), 200);
    assert!(served.seen.all().is_empty());
    Ok(())
}

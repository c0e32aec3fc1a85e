//! Keepalive and handshake timers, on tokio's paused clock.

use std::time::Duration;

use ambit_hbone::client::{ClientSettings, Connection};
use ambit_hbone::server::{Rejection, ServerSettings};
use ambit_hbone::{ConnectRequest, Error};
use tokio::io::AsyncWriteExt;

use crate::support::{self, serve, target};

#[tokio::test(start_paused = true)]
async fn server_drops_a_client_that_stops_answering_pings() -> anyhow::Result<()> {
    let settings = ServerSettings::default();
    let give_up = settings.keepalive_interval + settings.keepalive_timeout;
    let served = serve(settings, support::echo);
    // A client that says hello, then never reads again (so never answers a PING).
    let mut client = served.client_io;
    client.write_all(&support::client_start()).await?;

    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(give_up * 2, served.server).await??;
    assert!(matches!(result, Err(Error::KeepaliveTimeout(_))), "{result:?}");
    assert!(started.elapsed() >= give_up, "not before interval + timeout");
    assert_eq!(served.seen.all(), [Rejection::KeepaliveTimeout]);
    drop(client);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn client_closes_a_connection_whose_server_went_silent() -> anyhow::Result<()> {
    let settings = ClientSettings::default();
    let give_up = settings.keepalive_interval + settings.keepalive_timeout;
    // A "server" that never reads or writes.
    let (client_io, _silent) = tokio::io::duplex(support::PIPE);
    let conn = Connection::handshake(client_io, &settings).await?;
    assert!(!conn.is_closed());
    tokio::time::sleep(give_up + Duration::from_secs(1)).await;
    assert!(conn.is_closed());
    let err = conn.connect(&ConnectRequest::new(target())).await.expect_err("closed");
    assert!(err.is_connection_closed(), "{err}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_both_sides_up() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!conn.is_closed());
    assert!(!served.server.is_finished());
    let mut stream = conn.connect(&ConnectRequest::new(target())).await?;
    stream.write_all(b"still here").await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn silent_client_fails_the_handshake() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let result = tokio::time::timeout(Duration::from_secs(60), served.server).await??;
    assert!(matches!(result, Err(Error::HandshakeTimeout(_))), "{result:?}");
    assert_eq!(served.seen.all(), [Rejection::HandshakeFailed]);
    drop(served.client_io);
    Ok(())
}

#[tokio::test]
async fn http1_client_fails_the_handshake() -> anyhow::Result<()> {
    let mut served = serve(ServerSettings::default(), support::echo);
    served
        .client_io
        .write_all(b"CONNECT 10.0.0.7:8080 HTTP/1.1\r\nHost: 10.0.0.7:8080\r\n\r\n")
        .await?;
    let result = tokio::time::timeout(Duration::from_secs(10), served.server).await??;
    assert!(matches!(result, Err(Error::Handshake(_))), "{result:?}");
    assert_eq!(served.seen.all(), [Rejection::HandshakeFailed]);
    Ok(())
}

//! Graceful shutdown: GOAWAY stops new streams, in-flight ones finish, then the server returns.

use std::time::Duration;

use ambit_hbone::ConnectRequest;
use ambit_hbone::client::{ClientSettings, Connection};
use ambit_hbone::server::ServerSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, serve, target};

#[tokio::test]
async fn goaway_lets_in_flight_streams_finish() -> anyhow::Result<()> {
    let mut served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let mut stream = conn.connect(&ConnectRequest::new(target())).await?;
    stream.write_all(b"before").await?;

    served.shutdown.take().map(|tx| tx.send(()));
    // Let the GOAWAY (and h2's follow-up PING round trip) land.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!served.server.is_finished(), "an open stream keeps the connection");
    assert!(
        conn.connect(&ConnectRequest::new(target())).await.is_err(),
        "no new streams after GOAWAY"
    );

    stream.write_all(b" and after").await?;
    stream.shutdown().await?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await?;
    assert_eq!(echoed, b"before and after");
    drop(stream);

    let result = tokio::time::timeout(Duration::from_secs(5), served.server).await??;
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn idle_connection_closes_at_once_on_shutdown() -> anyhow::Result<()> {
    let mut served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    drop(conn.connect(&ConnectRequest::new(target())).await?);
    served.shutdown.take().map(|tx| tx.send(()));
    let result = tokio::time::timeout(Duration::from_secs(5), served.server).await??;
    assert!(result.is_ok(), "{result:?}");
    tokio::time::timeout(Duration::from_secs(5), async {
        while !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn client_close_ends_the_server_cleanly() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let mut stream = conn.connect(&ConnectRequest::new(target())).await?;
    conn.close();
    assert!(conn.is_closed());
    // The open stream still works after close().
    stream.write_all(b"x").await?;
    stream.shutdown().await?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await?;
    assert_eq!(echoed, b"x");
    drop(stream);
    let result = tokio::time::timeout(Duration::from_secs(5), served.server).await??;
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

//! Happy paths: CONNECT round trip, headers, bulk transfer with half-close both ways.

use ambit_hbone::client::{ClientSettings, Connection};
use ambit_hbone::server::ServerSettings;
use ambit_hbone::{ConnectRequest, copy_bidirectional};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{self, payload, serve, target};

#[tokio::test]
async fn connect_carries_headers_and_echoes() -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let served = serve(ServerSettings::default(), support::recording_echo(tx));
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;

    let request = ConnectRequest {
        target: target(),
        forwarded_for: Some("10.0.0.1".parse()?),
        baggage: Some("k8s.namespace.name=default,k8s.pod.name=client".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    let mut stream = conn.connect(&request).await?;
    assert_eq!(conn.active_streams(), 1);

    let (seen, headers) = rx.recv().await.expect("handler saw the request");
    assert_eq!(seen, request);
    assert_eq!(
        headers.get("forwarded").map(|v| v.as_bytes()),
        Some(&b"for=10.0.0.1"[..])
    );

    stream.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");

    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    assert!(rest.is_empty(), "echo closes after our END_STREAM");
    drop(stream);
    assert_eq!(conn.active_streams(), 0);
    Ok(())
}

#[tokio::test]
async fn ipv6_target_and_forwarded() -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let served = serve(ServerSettings::default(), support::recording_echo(tx));
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let mut request = ConnectRequest::new("[fd00::7]:15008".parse()?);
    request.forwarded_for = Some("fd00::1".parse()?);
    let _stream = conn.connect(&request).await?;
    let (seen, _) = rx.recv().await.expect("handler saw the request");
    assert_eq!(seen, request);
    Ok(())
}

/// 3 MiB each way through `copy_bidirectional` on both ends, the app half-closing first.
#[tokio::test]
async fn bulk_transfer_through_copy_bidirectional() -> anyhow::Result<()> {
    const LEN: usize = 3 * 1024 * 1024 + 17;
    let served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let stream = conn.connect(&ConnectRequest::new(target())).await?;

    // The client app's socket is one end of a pipe; the proxy copies the other end.
    let (app, mut proxy_side) = tokio::io::duplex(64 * 1024);
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_side, stream).await });

    let data = payload(LEN, 7);
    let (mut app_r, mut app_w) = tokio::io::split(app);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        app_w.write_all(&sent).await?;
        app_w.shutdown().await?;
        anyhow::Ok(app_w)
    });
    let mut echoed = Vec::with_capacity(LEN);
    app_r.read_to_end(&mut echoed).await?;
    let _app_w = writer.await??;

    assert_eq!(echoed.len(), LEN);
    assert!(echoed == data, "echoed bytes differ");
    assert_eq!(proxy.await??, (LEN as u64, LEN as u64));
    assert_eq!(conn.active_streams(), 0, "stream released after copy");
    Ok(())
}

/// The server reads to EOF before answering: END_STREAM reaches it while its side stays open,
/// and its reply still arrives afterwards. Uses `H2Stream` as AsyncRead/AsyncWrite directly.
#[tokio::test]
async fn half_close_lets_the_other_side_keep_sending() -> anyhow::Result<()> {
    const UP: usize = 1024 * 1024 + 3;
    const DOWN: usize = 2 * 1024 * 1024 + 5;
    let served = serve(ServerSettings::default(), |incoming| async move {
        let Ok(mut stream) = incoming.accept() else {
            return;
        };
        let mut received = Vec::new();
        if stream.read_to_end(&mut received).await.is_err() || received != payload(UP, 1) {
            return;
        }
        let _ = stream.write_all(&payload(DOWN, 2)).await;
        let _ = stream.shutdown().await;
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let stream = conn.connect(&ConnectRequest::new(target())).await?;
    let (mut r, mut w) = tokio::io::split(stream);
    w.write_all(&payload(UP, 1)).await?;
    w.shutdown().await?;
    let mut reply = Vec::new();
    r.read_to_end(&mut reply).await?;
    assert_eq!(reply.len(), DOWN);
    assert!(reply == payload(DOWN, 2), "reply differs");
    Ok(())
}

/// Many streams share one connection concurrently.
#[tokio::test]
async fn streams_multiplex_on_one_connection() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = conn.connect(&ConnectRequest::new(target())).await?;
            let data = payload(64 * 1024, i);
            stream.write_all(&data).await?;
            let mut back = vec![0u8; data.len()];
            stream.read_exact(&mut back).await?;
            anyhow::ensure!(back == data, "stream {i} echoed wrong bytes");
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A server that finishes and walks away (h2 resets with NO_ERROR) ends the tunnel cleanly even
/// though the client app never closes its side.
#[tokio::test]
async fn server_finishing_early_ends_the_copy() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), |incoming| async move {
        let Ok(mut stream) = incoming.accept() else {
            return;
        };
        let _ = stream.write_all(b"bye").await;
        let _ = stream.shutdown().await;
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let stream = conn.connect(&ConnectRequest::new(target())).await?;
    let (mut app, mut proxy_side) = tokio::io::duplex(64 * 1024);
    let copied = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        copy_bidirectional(&mut proxy_side, stream),
    )
    .await??;
    assert_eq!(copied, (0, 3));
    let mut got = Vec::new();
    app.read_to_end(&mut got).await?;
    assert_eq!(got, b"bye");
    Ok(())
}

/// A server that abandons the stream mid-way (RST_STREAM CANCEL) fails the copy.
#[tokio::test]
async fn server_reset_fails_the_copy() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), |incoming| async move {
        drop(incoming.accept());
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let stream = conn.connect(&ConnectRequest::new(target())).await?;
    let (_app, mut proxy_side) = tokio::io::duplex(64 * 1024);
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        copy_bidirectional(&mut proxy_side, stream),
    )
    .await?;
    let err = result.expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    Ok(())
}

/// A tunnel aborted after data flowed still reports the bytes it moved (metrics count them).
#[tokio::test]
async fn a_failed_copy_reports_the_bytes_it_moved() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), |incoming| async move {
        let Ok(mut stream) = incoming.accept() else {
            return;
        };
        let _ = stream.write_all(b"bye").await;
        let _ = stream.flush().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Dropped without END_STREAM: the stream is reset.
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let stream = conn.connect(&ConnectRequest::new(target())).await?;
    let (mut app, mut proxy_side) = tokio::io::duplex(64 * 1024);
    let reader = tokio::spawn(async move {
        let mut got = [0u8; 3];
        app.read_exact(&mut got).await.map(|_| got)
    });
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        copy_bidirectional(&mut proxy_side, stream),
    )
    .await?;
    let err = result.expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!((err.socket_to_stream, err.stream_to_socket), (0, 3));
    assert_eq!(&reader.await??, b"bye");
    Ok(())
}

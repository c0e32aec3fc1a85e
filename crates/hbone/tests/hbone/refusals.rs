//! Refusals by the handler and 400s for malformed requests, checked from the wire.

use ambit_hbone::client::{ClientSettings, Connection};
use ambit_hbone::server::{Rejection, ServerSettings};
use ambit_hbone::{ConnectRequest, Refusal};
use http::{Method, Request, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;

use crate::support::{self, HEADERS, RST_STREAM, serve};

#[tokio::test]
async fn handler_refusals_reach_the_client_as_status() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), |incoming| async move {
        let refusal = match incoming.request().target.port() {
            1 => Refusal::Unauthorized,
            2 => Refusal::Unavailable,
            _ => Refusal::BadRequest,
        };
        incoming.refuse(refusal);
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    for (port, status) in [
        (1, StatusCode::UNAUTHORIZED),
        (2, StatusCode::SERVICE_UNAVAILABLE),
        (3, StatusCode::BAD_REQUEST),
    ] {
        let request = ConnectRequest::new(([10, 0, 0, 7], port).into());
        let err = conn.connect(&request).await.expect_err("refused");
        assert_eq!(err.status(), Some(status), "{err}");
    }
    assert_eq!(conn.active_streams(), 0);
    assert!(!conn.is_closed(), "refusals leave the connection usable");
    assert!(served.seen.all().is_empty(), "handler refusals are not rejections");
    Ok(())
}

/// Sends `request` with a plain h2 client and returns the response status.
async fn raw_status(request: Request<()>) -> anyhow::Result<(StatusCode, Vec<Rejection>)> {
    let served = serve(ServerSettings::default(), support::echo);
    let (mut send, conn) = h2::client::handshake(served.client_io).await?;
    tokio::spawn(conn);
    let (response, _body) = send.send_request(request, true)?;
    let status = response.await?.status();
    Ok((status, served.seen.all()))
}

fn connect_to(authority: &str) -> anyhow::Result<Request<()>> {
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(authority.parse()?);
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = Uri::from_parts(parts)?;
    *request.version_mut() = Version::HTTP_2;
    Ok(request)
}

#[tokio::test]
async fn get_is_rejected_as_not_connect() -> anyhow::Result<()> {
    let mut request = Request::new(());
    *request.uri_mut() = "http://10.0.0.7:8080/".parse()?;
    let (status, seen) = raw_status(request).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(seen, [Rejection::NotConnect]);
    Ok(())
}

#[tokio::test]
async fn host_name_authority_is_rejected() -> anyhow::Result<()> {
    let (status, seen) = raw_status(connect_to("foo")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(seen, [Rejection::BadAuthority]);
    Ok(())
}

#[tokio::test]
async fn out_of_range_port_is_rejected() -> anyhow::Result<()> {
    let (status, seen) = raw_status(connect_to("10.0.0.7:99999")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(seen, [Rejection::BadAuthority]);
    Ok(())
}

/// The h2 client cannot send a CONNECT without `:authority`, so raw frames do. h2's server
/// accepts the header block (RFC 9113 §8.5 makes it malformed, but h2 leaves that to us) and we
/// answer 400.
#[tokio::test]
async fn missing_authority_is_rejected() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), support::echo);
    let (mut r, mut w) = tokio::io::split(served.client_io);
    let mut buf = support::client_start();
    support::frame(
        &mut buf,
        HEADERS,
        support::END_HEADERS | support::END_STREAM,
        1,
        &support::connect_block(None),
    );
    w.write_all(&buf).await?;
    let answer = loop {
        let frame = support::read_frame(&mut r).await.expect("server answers");
        if frame.stream == 1 && (frame.kind == HEADERS || frame.kind == RST_STREAM) {
            break frame;
        }
    };
    assert_eq!(
        answer.kind, HEADERS,
        "answered with a response, not a reset: {answer:?}"
    );
    // HPACK static table index 12 is `:status: 400` (RFC 7541 Appendix A); h2 sends it indexed.
    assert_eq!(answer.payload.first(), Some(&0x8c), "status 400: {answer:?}");
    assert_eq!(served.seen.all(), [Rejection::MissingAuthority]);
    Ok(())
}

#[tokio::test]
async fn unanswered_connect_is_reset() -> anyhow::Result<()> {
    let served = serve(ServerSettings::default(), |incoming| async move {
        drop(incoming);
    });
    let conn = Connection::handshake(served.client_io, &ClientSettings::default()).await?;
    let err = conn
        .connect(&ConnectRequest::new(([10, 0, 0, 7], 80).into()))
        .await
        .expect_err("reset");
    assert!(matches!(err, ambit_hbone::Error::Stream { .. }), "{err}");
    assert_eq!(err.status(), None);
    assert!(!conn.is_closed(), "only the stream failed");
    Ok(())
}

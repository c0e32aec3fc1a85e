//! What every Ambit binary shares for being observed: logging set-up, and the small HTTP/1.1
//! server behind the admin, metrics and health endpoints (off the data path). What the endpoints
//! say is each binary's business.

use std::{convert::Infallible, io::IsTerminal as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A request handler: path in, (status, content type, body) out.
pub type Route = Arc<dyn Fn(&str) -> (StatusCode, &'static str, String) + Send + Sync>;

/// Logs to stderr, filtered by the `RUST_LOG`-style directives in environment variable
/// `filter_var` (default `info`), coloured only on a terminal.
pub fn init_logging(filter_var: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Binds `addr` now, so that a port clash fails start-up rather than a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `route` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, route: Route, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "endpoint accept failed");
                    continue;
                }
            },
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let route = route.clone();
                async move {
                    let (status, content_type, body) = route(req.uri().path());
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The 404 answer for an unknown path.
pub fn not_found(path: &str) -> (StatusCode, &'static str, String) {
    (
        StatusCode::NOT_FOUND,
        "text/plain",
        format!("no such endpoint: {path}\n"),
    )
}

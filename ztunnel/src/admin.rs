//! The off-data-path HTTP endpoints: admin (`/config_dump`, localhost only), metrics
//! (`/metrics`, `/stats/prometheus`) and readiness (`/healthz/ready`). Plain HTTP/1.1 on hyper.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A request handler: path in, (status, content type, body) out.
pub type Route = Arc<dyn Fn(&str) -> (StatusCode, &'static str, String) + Send + Sync>;

/// Binds `addr` now (so a port clash fails start-up) and serves `route` until `stop`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, route: Route, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
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

pub fn not_found(path: &str) -> (StatusCode, &'static str, String) {
    (
        StatusCode::NOT_FOUND,
        "text/plain",
        format!("no such endpoint: {path}\n"),
    )
}

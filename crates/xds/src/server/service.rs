//! The gRPC method itself, in place of tonic's generated `AggregatedDiscoveryServiceServer`,
//! whose codec keeps one buffer per stream and direction at the size of the largest message:
//! requests are read by [`super::requests`], and responses, encoded by [`super::response`], go
//! out as they are, each message in a buffer of its own.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataMap};
use tonic::server::NamedService;
use tonic::{Status, body::Body};

use super::requests::Requests;
use super::{XdsServer, stream};

/// The one method of the service (Envoy's state-of-the-world ADS is not served).
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The delta ADS service as an HTTP service for a `tonic::transport::Server` or its `Routes`.
/// Build it with [`XdsServer::into_service`].
#[derive(Debug, Clone)]
pub struct AdsService {
    server: XdsServer,
}

impl AdsService {
    pub(super) fn new(server: XdsServer) -> Self {
        Self { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower_service::Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move { Ok(server.open(request).await.unwrap_or_else(Status::into_http)) })
    }
}

impl XdsServer {
    /// Authenticates the caller and starts its stream; errors become trailers-only responses.
    async fn open<B>(&self, request: http::Request<B>) -> Result<http::Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        if request.uri().path() != DELTA_PATH {
            return Err(Status::unimplemented(format!(
                "{} is not served here; this xds server serves only {DELTA_PATH}",
                request.uri().path()
            )));
        }
        // As tonic's generated server without compression enabled.
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return Err(Status::unimplemented(format!(
                "request messages compressed with {encoding:?}; the xds server takes them uncompressed"
            )));
        }
        if self.shared.shutdown.is_cancelled() {
            return Err(Status::unavailable("xds server shutting down"));
        }
        let (parts, body) = request.into_parts();
        let metadata = MetadataMap::from_headers(parts.headers);
        let identity = self.shared.authenticator.authenticate(&metadata).await?;
        let requests = Requests::new(Body::new(body));
        let (tx, rx) = mpsc::channel(self.shared.config.stream_buffer.max(1));
        tokio::spawn(stream::serve(Arc::clone(&self.shared), identity, requests, tx));
        let mut response = http::Response::new(Body::new(ResponseBody {
            messages: rx,
            done: false,
        }));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
        Ok(response)
    }
}

/// A stream's encoded messages as DATA frames, then its status as trailers.
struct ResponseBody {
    messages: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(self.messages.poll_recv(cx)) {
            Some(Ok(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
            Some(Err(status)) => status,
            // The stream task ended without an error: the client closed its side.
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(
            status.add_header(&mut trailers).map(|()| Frame::trailers(trailers)),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

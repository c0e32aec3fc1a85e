//! The delta ADS server the operator runs: the `AggregatedDiscoveryService` gRPC method over a
//! [`ResourceStore`] the operator updates incrementally.
//!
//! A push costs O(changed × clients): each stream follows the store's change log from its own
//! cursor. Resources are encoded once, in the store; a stream keeps no copy of what it sent.
//! Bursts are debounced. Callers are authenticated per stream by an [`Authenticator`].
//! Where resources come from, and which caller may see what, is the operator's business.

mod debounce;
mod metrics;
mod requests;
mod response;
mod service;
mod store;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub use metrics::ServerMetrics;
pub use service::AdsService;
pub use store::ResourceStore;

/// Tuning of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// A push waits until the store has been quiet this long…
    pub debounce_quiet: Duration,
    /// …but no longer than this after the first change of a burst.
    pub debounce_max_delay: Duration,
    /// Responses buffered per stream before the stream waits for its client.
    pub stream_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            debounce_quiet: Duration::from_millis(10),
            debounce_max_delay: Duration::from_millis(100),
            stream_buffer: 8,
        }
    }
}

/// Who is calling, as the [`Authenticator`] established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// For logs: a service account, node or SPIFFE id.
    pub name: String,
}

/// Checks a stream's caller from its request metadata (the bearer token is in `authorization`).
/// Returns the identity, or a `Status` (typically `unauthenticated`) that says what is wrong.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, metadata: &'a MetadataMap) -> BoxFuture<'a, Result<ClientIdentity, Status>>;
}

/// Accepts every caller, for plaintext tests and the local mesh without tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _: &'a MetadataMap) -> BoxFuture<'a, Result<ClientIdentity, Status>> {
        Box::pin(async {
            Ok(ClientIdentity {
                name: "anonymous".to_owned(),
            })
        })
    }
}

/// The token of an `authorization: Bearer <token>` header, or `unauthenticated` saying why not.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no authorization header; send `authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    value
        .strip_prefix("Bearer ")
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Status::unauthenticated("authorization header is not `Bearer <token>`"))
}

/// State every stream shares.
struct Shared {
    store: Arc<ResourceStore>,
    authenticator: Arc<dyn Authenticator>,
    metrics: Arc<ServerMetrics>,
    push: watch::Receiver<u64>,
    shutdown: CancellationToken,
    config: ServerConfig,
}

/// The delta ADS service. Clone it freely; clones share the store and the debouncer.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl XdsServer {
    /// Builds the server and spawns its debouncer, which stops when the last clone is dropped.
    /// Must be called inside a tokio runtime.
    pub fn new(
        store: Arc<ResourceStore>,
        authenticator: Arc<dyn Authenticator>,
        metrics: Arc<ServerMetrics>,
        config: ServerConfig,
    ) -> Self {
        let (push_tx, push) = watch::channel(0);
        tokio::spawn(debounce::run(
            store.subscribe_changes(),
            push_tx,
            config.debounce_quiet,
            config.debounce_max_delay,
        ));
        Self {
            shared: Arc::new(Shared {
                store,
                authenticator,
                metrics,
                push,
                shutdown: CancellationToken::new(),
                config,
            }),
        }
    }

    /// Ends every open stream with `unavailable`, so clients reconnect (to another replica) and
    /// a graceful `tonic` shutdown can finish; new streams are refused.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// The service to add to a `tonic::transport::Server` or its `Routes`.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

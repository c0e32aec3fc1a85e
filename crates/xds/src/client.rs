//! The workload xDS client ztunnel runs: one delta ADS stream subscribed wildcard to `Address`
//! and `Authorization`, every applied response published as a complete [`State`] on a `watch`
//! channel, bad responses NACKed while the last good state stays, reconnects with backoff and
//! `initial_resource_versions` so the server sends exactly the difference.
//!
//! It owns the protocol side only; what the data path does with the state is ztunnel's.

pub(crate) mod cache;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_model::State;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::convert::ConvertOptions;
use cache::Cache;

/// The types the client subscribes to, in the order it subscribes.
const TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// Where the bearer token comes from; read again on every (re)connect, so rotation works.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum TokenSource {
    /// No `authorization` header (plaintext tests, local mesh).
    #[default]
    None,
    /// A file holding the token, e.g. a projected service-account token.
    File(PathBuf),
    /// A callback returning the token.
    Callback(Arc<dyn Fn() -> std::io::Result<String> + Send + Sync>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Callback(_) => f.write_str("Callback"),
        }
    }
}

/// How to reach and identify to the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://operator.ambit-system:15010` or, for tests, `http://127.0.0.1:port`.
    pub endpoint: String,
    /// TLS with the mesh root (`ClientTlsConfig::new().ca_certificate(..).domain_name(..)`);
    /// `None` for plaintext.
    pub tls: Option<ClientTlsConfig>,
    pub token: TokenSource,
    /// Envoy node id, e.g. `ztunnel~<pod ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub node_id: String,
    /// Extra node metadata; ztunnel sends `NODE_NAME` among others.
    pub node_metadata: BTreeMap<String, String>,
    pub convert: ConvertOptions,
    /// First reconnect delay, doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// Plaintext, no token, default backoff (100 ms to 15 s).
    pub fn new(endpoint: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            token: TokenSource::None,
            node_id: node_id.into(),
            node_metadata: BTreeMap::new(),
            convert: ConvertOptions::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
        }
    }
}

/// Why one connection attempt or stream ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid xds endpoint {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to xds server {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot read the xds bearer token: {0}")]
    Token(std::io::Error),
    #[error("xds bearer token is not a valid header value")]
    TokenFormat,
    #[error("xds stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("xds stream closed by the server")]
    Closed,
}

/// Progress the readiness probe and tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStatus {
    /// Every subscribed type has had a first response applied.
    pub synced: bool,
    /// Responses applied and published.
    pub applied: u64,
    /// Responses rejected (NACKed).
    pub rejected: u64,
    /// Streams opened so far.
    pub connects: u64,
}

/// The client. [`XdsClient::run`] drives it until cancelled.
#[derive(Debug)]
pub struct XdsClient {
    config: ClientConfig,
    state: watch::Sender<Arc<State>>,
    status: watch::Sender<ClientStatus>,
    cache: Cache,
}

impl XdsClient {
    /// A client publishing on `state`, where ztunnel's data path reads.
    pub fn new(config: ClientConfig, state: watch::Sender<Arc<State>>) -> Self {
        Self {
            config,
            state,
            status: watch::Sender::new(ClientStatus::default()),
            cache: Cache::default(),
        }
    }

    /// Watches sync progress; readiness waits for `synced`.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Connects, follows the stream, reconnects with backoff; returns when `stop` fires. The
    /// last good state stays published while disconnected.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut delay = self.config.backoff_initial;
        loop {
            let applied_before = self.status.borrow().applied;
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.stream_once() => outcome,
            };
            if let Err(error) = outcome {
                tracing::warn!(endpoint = %self.config.endpoint, %error, "xds stream ended; reconnecting");
            }
            if self.status.borrow().applied > applied_before {
                delay = self.config.backoff_initial;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.config.backoff_max);
        }
    }

    async fn stream_once(&mut self) -> Result<(), ClientError> {
        let channel = self.connect().await?;
        let (tx, rx) = mpsc::channel(TYPES.len() + 2);
        for (i, type_url) in TYPES.into_iter().enumerate() {
            let request = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node()),
                type_url: type_url.to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                initial_resource_versions: self.cache.versions(type_url),
                ..Default::default()
            };
            // The receiver is still in hand, so the channel is open and has room.
            tx.try_send(request).map_err(|_| ClientError::Closed)?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = self.token()? {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::TokenFormat)?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        self.status.send_modify(|s| s.connects += 1);
        let mut synced_types = Vec::new();
        while let Some(response) = responses.message().await? {
            let ack = self.apply(&response, &mut synced_types);
            if tx.send(ack).await.is_err() {
                return Err(ClientError::Closed);
            }
        }
        Err(ClientError::Closed)
    }

    /// Applies one response and returns its ACK or NACK.
    fn apply(&mut self, response: &DeltaDiscoveryResponse, synced_types: &mut Vec<String>) -> DeltaDiscoveryRequest {
        let mut ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        match self.cache.apply(response, &self.config.convert) {
            Ok(()) => {
                let state = self.cache.state(&self.config.convert.trust_domain);
                self.state.send_replace(Arc::new(state));
                if !synced_types.contains(&response.type_url) {
                    synced_types.push(response.type_url.clone());
                }
                let synced = TYPES.iter().all(|t| synced_types.iter().any(|s| s == t));
                self.status.send_modify(|s| {
                    s.applied += 1;
                    s.synced |= synced;
                });
            }
            Err(error) => {
                tracing::warn!(type_url = %response.type_url, nonce = %response.nonce, %error, "rejecting xds response (NACK); keeping the last good state");
                self.status.send_modify(|s| s.rejected += 1);
                ack.error_detail = Some(ambit_proto::google::rpc::Status {
                    code: tonic::Code::InvalidArgument as i32,
                    message: error.to_string(),
                    details: Vec::new(),
                });
            }
        }
        ack
    }

    async fn connect(&self) -> Result<Channel, ClientError> {
        let endpoint = &self.config.endpoint;
        let mut builder = Endpoint::from_shared(endpoint.clone()).map_err(|source| ClientError::Endpoint {
            endpoint: endpoint.clone(),
            source,
        })?;
        if let Some(tls) = &self.config.tls {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|source| ClientError::Endpoint {
                    endpoint: endpoint.clone(),
                    source,
                })?;
        }
        builder.connect().await.map_err(|source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        })
    }

    fn token(&self) -> Result<Option<String>, ClientError> {
        let token = match &self.config.token {
            TokenSource::None => return Ok(None),
            TokenSource::File(path) => std::fs::read_to_string(path).map_err(ClientError::Token)?,
            TokenSource::Callback(callback) => callback().map_err(ClientError::Token)?,
        };
        Ok(Some(token.trim().to_owned()))
    }

    fn node(&self) -> Node {
        let fields = self
            .config
            .node_metadata
            .iter()
            .map(|(k, v)| {
                let value = prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.clone())),
                };
                (k.clone(), value)
            })
            .collect();
        Node {
            id: self.config.node_id.clone(),
            metadata: Some(prost_types::Struct { fields }),
            user_agent_name: "ambit-ztunnel".to_owned(),
            ..Default::default()
        }
    }
}

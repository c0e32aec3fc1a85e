//! Wires the operator together: a source (Kubernetes watches or a manifest directory) feeds the
//! index; each batch of changes is projected into the xDS store and the status writer; the CA
//! and xDS services share one TLS gRPC port; metrics, health and debug on the monitoring port;
//! in Kubernetes, leader election decides which replica writes to the API.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ambit_index::{Index, Object};
use ambit_xds::convert::ConvertOptions;
use ambit_xds::server::{ClientIdentity, ResourceStore, ServerConfig, ServerMetrics, XdsServer};
use futures_util::future::BoxFuture;
use hyper::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ca::{self, Authenticator, BootstrapTokens, CaConfig, CaService, NodeDirectory, TokenReviewAuthenticator};
use crate::config::{Config, Source};
use crate::leader::{self, LeaseConfig};
use crate::objects;
use crate::push::Projection;
use crate::source::kubernetes::Event;
use crate::status::{self, StatusUpdate};
use ambit_manifests::{Change, Directory};

/// The leader Lease's name, in the operator's namespace.
pub const LEASE_NAME: &str = "ambit-operator";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    KubeConfig(String),
    #[error(transparent)]
    Root(#[from] ca::RootError),
    #[error(transparent)]
    Bootstrap(#[from] ca::BootstrapError),
    #[error(transparent)]
    Publish(#[from] ca::PublishError),
    #[error(transparent)]
    Grpc(#[from] crate::grpc::GrpcError),
    #[error("cannot listen on {addr} (monitoring): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("manifest directory {path}: {source}")]
    Manifests {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The operator's own metrics.
#[derive(Debug, Default)]
struct Metrics {
    events: Counter,
    manifest_errors: Counter,
    leader: Gauge,
    workloads: Gauge,
}

/// A running operator.
pub struct Operator {
    stop: CancellationToken,
    xds: XdsServer,
    tasks: Vec<JoinHandle<()>>,
    grpc_addr: SocketAddr,
    monitoring_addr: SocketAddr,
    root_pem: String,
}

/// The source's connection, resolved at start: a Kubernetes client, or the manifest directory
/// with the bootstrap tokens that stand in for TokenReview.
enum Mode<'c> {
    Kubernetes(kube::Client),
    Directory {
        path: &'c std::path::Path,
        poll: std::time::Duration,
        bootstrap_tokens: &'c std::path::Path,
    },
}

/// Lets the CA ask the index which identities run on a node.
struct IndexDirectory(Arc<RwLock<Index>>);

impl NodeDirectory for IndexDirectory {
    fn has_identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .may_node_request(node, namespace, service_account)
    }
}

/// xDS callers are authenticated exactly as CA callers are.
struct XdsAuthenticator(Arc<dyn Authenticator>);

impl ambit_xds::server::Authenticator for XdsAuthenticator {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<ClientIdentity, tonic::Status>> {
        Box::pin(async move {
            let token = ambit_xds::server::bearer_token(metadata)?;
            let caller = self.0.authenticate(token).await.map_err(tonic::Status::from)?;
            Ok(ClientIdentity {
                name: caller.to_string(),
            })
        })
    }
}

impl Operator {
    /// Loads or creates the CA, binds the ports and starts every task. Fails on what a user
    /// must fix (files, flags, an unreachable API server at start).
    pub async fn start(config: Config) -> Result<Operator, StartError> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut registry = Registry::with_prefix("ambit_operator");
        let metrics = Arc::new(Metrics::default());
        registry.register(
            "source_events",
            "Objects applied to or deleted from the index",
            metrics.events.clone(),
        );
        registry.register(
            "manifest_errors",
            "Manifest documents skipped because they could not be read",
            metrics.manifest_errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        registry.register("workloads", "Workloads in the index", metrics.workloads.clone());

        let mode = match &config.source {
            Source::Kubernetes { kubeconfig } => Mode::Kubernetes(kube_client(kubeconfig.as_deref()).await?),
            Source::Directory {
                path,
                poll,
                bootstrap_tokens,
            } => Mode::Directory {
                path,
                poll: *poll,
                bootstrap_tokens,
            },
        };
        let kubernetes = matches!(mode, Mode::Kubernetes(_));
        let ca = Arc::new(match (&config.supplied_ca, &mode) {
            (Some(supplied), _) => ca::load_ca_files(&supplied.cert, &supplied.key, supplied.chain.as_deref())?,
            (None, Mode::Kubernetes(client)) => ca::load_or_create_secret(client.clone(), &config.trust_domain).await?,
            (None, Mode::Directory { .. }) => ca::load_or_generate_in_dir(&config.state_dir, &config.trust_domain)?,
        });
        let root_pem = ca.root_pem();
        let authenticator: Arc<dyn Authenticator> = match &mode {
            Mode::Kubernetes(client) => Arc::new(TokenReviewAuthenticator::new(
                client.clone(),
                vec![ca::DEFAULT_AUDIENCE.to_owned()],
            )),
            Mode::Directory { bootstrap_tokens, .. } => Arc::new(BootstrapTokens::from_file(bootstrap_tokens)?),
        };

        let index = Arc::new(RwLock::new(Index::new(ambit_index::Config {
            trust_domain: config.trust_domain.clone(),
            cluster_domain: config.domain_suffix.clone(),
            cluster_id: config.cluster_id.clone(),
        })));
        let mut ca_config = CaConfig::new(config.trust_domain.clone());
        ca_config.default_ttl = config.cert_ttl;
        ca_config.max_ttl = config.max_cert_ttl;
        ca_config.ztunnel_service_accounts = vec![config.ztunnel_service_account.clone()];
        let ca_service = CaService::new(
            ca.clone(),
            authenticator.clone(),
            Arc::new(IndexDirectory(index.clone())),
            ca_config,
            &mut registry,
        );
        let store = ResourceStore::new(4096);
        let xds_metrics = Arc::new(ServerMetrics::default());
        xds_metrics.register(&mut registry);
        let xds = XdsServer::new(
            store.clone(),
            Arc::new(XdsAuthenticator(authenticator)),
            xds_metrics,
            ServerConfig {
                debounce_quiet: config.debounce,
                debounce_max_delay: config.max_debounce,
                ..ServerConfig::default()
            },
        );

        // Leadership: in Kubernetes by Lease; a local operator is alone and always leads.
        let (leading_tx, leading) = watch::channel(!kubernetes);
        let (events_tx, events_rx) = mpsc::channel::<Event<Object>>(1024);
        let (status_tx, status_rx) = mpsc::unbounded_channel::<Vec<StatusUpdate>>();
        let (namespaces_tx, namespaces_rx) = mpsc::unbounded_channel::<String>();
        let expected_syncs = match &mode {
            Mode::Kubernetes(client) => {
                objects::watch_all(client, &events_tx, &stop);
                tasks.push(tokio::spawn(leader::run(
                    kube::Api::<Lease>::namespaced(client.clone(), &config.namespace),
                    LeaseConfig {
                        namespace: config.namespace.clone(),
                        name: LEASE_NAME.to_owned(),
                        identity: config.pod_name.clone(),
                        duration: config.lease_duration,
                        retry: config.lease_retry,
                    },
                    leading_tx,
                    stop.clone(),
                )));
                tasks.push(tokio::spawn(status::run(
                    client.clone(),
                    status_rx,
                    leading.clone(),
                    stop.clone(),
                )));
                tasks.push(tokio::spawn(publish_roots(
                    client.clone(),
                    root_pem.clone(),
                    namespaces_rx,
                    leading.clone(),
                    stop.clone(),
                )));
                objects::WATCHED_KINDS
            }
            Mode::Directory { path, poll, .. } => {
                ca::write_root_file(&config.state_dir, &root_pem)?;
                let directory = Directory::new(path.to_path_buf(), Box::new(objects::decode));
                std::fs::read_dir(path).map_err(|source| StartError::Manifests {
                    path: path.to_path_buf(),
                    source,
                })?;
                tasks.push(tokio::spawn(scan_directory(
                    directory,
                    *poll,
                    events_tx.clone(),
                    metrics.clone(),
                    stop.clone(),
                )));
                drop((status_rx, namespaces_rx, leading_tx));
                1
            }
        };
        drop(events_tx);
        let synced = Arc::new(AtomicBool::new(false));
        tasks.push(tokio::spawn(index_loop(
            index.clone(),
            Projection::new(ConvertOptions {
                cluster_id: config.cluster_id.clone(),
                trust_domain: config.trust_domain.clone(),
            }),
            store,
            events_rx,
            expected_syncs,
            IndexOutputs {
                statuses: kubernetes.then_some(status_tx),
                namespaces: kubernetes.then_some(namespaces_tx),
                synced: synced.clone(),
                metrics: metrics.clone(),
            },
        )));
        {
            let metrics = metrics.clone();
            let mut leading = leading.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    metrics.leader.set(i64::from(*leading.borrow_and_update()));
                    if leading.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }

        let (listener, acceptor) = crate::grpc::bind(config.grpc_addr, ca.clone(), config.server_names.clone()).await?;
        let grpc_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
        let routes = tonic::service::Routes::new(xds.clone().into_service()).add_service(ca_service.into_server());
        tasks.push(tokio::spawn(crate::grpc::serve(
            listener,
            acceptor,
            routes,
            stop.clone(),
        )));

        let monitoring = ambit_telemetry::bind(config.monitoring_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.monitoring_addr,
                source,
            })?;
        let monitoring_addr = monitoring.local_addr().map_err(|source| StartError::Bind {
            addr: config.monitoring_addr,
            source,
        })?;
        tasks.push(tokio::spawn(ambit_telemetry::serve(
            monitoring,
            monitoring_route(Arc::new(registry), synced, index),
            stop.clone(),
        )));
        tracing::info!(grpc = %grpc_addr, monitoring = %monitoring_addr, source = ?config.source, "ambit-operator started");
        Ok(Operator {
            stop,
            xds,
            tasks,
            grpc_addr,
            monitoring_addr,
            root_pem,
        })
    }

    /// The bound gRPC address (xDS and CA).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound monitoring address.
    pub fn monitoring_addr(&self) -> SocketAddr {
        self.monitoring_addr
    }

    /// The mesh root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Ends xDS streams (clients reconnect elsewhere), releases the lease and stops every task.
    pub async fn stop(self) {
        self.xds.shutdown();
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A client from `kubeconfig`, else the in-cluster config or `KUBECONFIG`.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, StartError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StartError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| StartError::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| StartError::KubeConfig(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(StartError::Kube)
}

/// Where the index loop sends what it learns, besides the xDS store.
struct IndexOutputs {
    statuses: Option<mpsc::UnboundedSender<Vec<StatusUpdate>>>,
    namespaces: Option<mpsc::UnboundedSender<String>>,
    synced: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Applies source events to the index in batches and projects each batch.
async fn index_loop(
    index: Arc<RwLock<Index>>,
    mut projection: Projection,
    store: Arc<ResourceStore>,
    mut events: mpsc::Receiver<Event<Object>>,
    expected_syncs: usize,
    outputs: IndexOutputs,
) {
    let mut synced_kinds = BTreeSet::new();
    let mut batch = Vec::with_capacity(256);
    while events.recv_many(&mut batch, 1024).await > 0 {
        let mut new_namespaces = Vec::new();
        let (changes, statuses) = {
            let mut index = index.write().unwrap_or_else(|e| e.into_inner());
            for event in batch.drain(..) {
                match event {
                    Event::Synced(kind) => {
                        synced_kinds.insert(kind);
                    }
                    Event::Change(Change::Upsert(key, object)) => {
                        outputs.metrics.events.inc();
                        if matches!(object, Object::Namespace(_)) {
                            new_namespaces.push(key.name.clone());
                        }
                        if let Err(e) = index.apply(object) {
                            tracing::warn!(object = %key, error = %e, "object not indexed");
                        }
                    }
                    Event::Change(Change::Remove(key)) => {
                        outputs.metrics.events.inc();
                        if let Some(kind) = objects::kind_of(&key.group, &key.kind) {
                            index.delete(kind, &key.namespace, &key.name);
                        }
                    }
                }
            }
            let changes = index.drain_changes();
            let statuses: Vec<StatusUpdate> = changes
                .statuses
                .iter()
                .map(|key| (key.clone(), index.statuses().get(key).cloned()))
                .collect();
            // Before the first complete view, a push would tell proxies that objects not yet
            // listed are gone.
            if synced_kinds.len() >= expected_syncs {
                let pushed = projection.apply(&index, &changes, &store);
                if pushed.changed > 0 {
                    tracing::debug!(changed = pushed.changed, full = pushed.full, "xDS resources updated");
                }
                if !outputs.synced.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        workloads = index.workloads().len(),
                        services = index.services().len(),
                        "synced with the source; serving xDS"
                    );
                }
            }
            outputs
                .metrics
                .workloads
                .set(i64::try_from(index.workloads().len()).unwrap_or(i64::MAX));
            (changes, statuses)
        };
        for status in &statuses {
            if let (_, Some(s)) = status
                && let Some(condition) = s.conditions.iter().find(|c| !c.status)
            {
                tracing::warn!(object = %status.0, condition = %condition.type_, reason = %condition.reason, message = %condition.message, "not accepted");
            }
        }
        if let Some(tx) = &outputs.statuses
            && !statuses.is_empty()
        {
            let _ = tx.send(statuses);
        }
        if let Some(tx) = &outputs.namespaces {
            for namespace in new_namespaces {
                let _ = tx.send(namespace);
            }
        }
        drop(changes);
    }
}

/// Rescans the manifest directory every `poll`, reporting bad documents once each.
async fn scan_directory(
    mut directory: Directory<Object>,
    poll: std::time::Duration,
    tx: mpsc::Sender<Event<Object>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let scan = match directory.scan() {
            Ok(scan) => scan,
            Err(e) => {
                tracing::warn!(path = %directory.path().display(), error = %e, "cannot read the manifest directory; keeping what was read before");
                continue;
            }
        };
        for error in &scan.errors {
            metrics.manifest_errors.inc();
            tracing::warn!(file = %error.file.display(), line = error.line, reason = %error.reason, "manifest document skipped");
        }
        for change in scan.changes {
            if tx.send(Event::Change(change)).await.is_err() {
                return;
            }
        }
        if std::mem::take(&mut first) && tx.send(Event::Synced("directory")).await.is_err() {
            return;
        }
    }
}

/// Publishes the root ConfigMap into every namespace while leading, and into each new one.
async fn publish_roots(
    client: kube::Client,
    root_pem: String,
    mut namespaces: mpsc::UnboundedReceiver<String>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        if *leading.borrow_and_update() {
            match ca::publish_root_everywhere(&client, &root_pem).await {
                Ok(count) => tracing::info!(namespaces = count, "root certificate published"),
                Err(e) => tracing::warn!(error = %e, "cannot publish the root certificate"),
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = leading.changed() => {
                    if changed.is_err() { return }
                    break;
                }
                namespace = namespaces.recv() => {
                    let Some(namespace) = namespace else { return };
                    if *leading.borrow()
                        && let Err(e) = ca::publish_root_to_namespace(&client, &namespace, &root_pem).await
                    {
                        tracing::warn!(%namespace, error = %e, "cannot publish the root certificate");
                    }
                }
            }
        }
    }
}

fn monitoring_route(
    registry: Arc<Registry>,
    synced: Arc<AtomicBool>,
    index: Arc<RwLock<Index>>,
) -> ambit_telemetry::Route {
    Arc::new(move |path: &str| match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if synced.load(Ordering::Relaxed) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not synced with the source yet\n".to_owned(),
        ),
        "/debug/status" => {
            let index = index.read().unwrap_or_else(|e| e.into_inner());
            let statuses: Vec<serde_json::Value> = index
                .statuses()
                .iter()
                .map(|(key, status)| {
                    serde_json::json!({
                        "object": key.to_string(),
                        "observedGeneration": status.observed_generation,
                        "conditions": status.conditions.iter().map(|c| serde_json::json!({
                            "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let body = serde_json::to_string_pretty(&statuses).unwrap_or_default();
            (StatusCode::OK, "application/json", body + "\n")
        }
        other => ambit_telemetry::not_found(other),
    })
}

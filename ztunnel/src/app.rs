//! Wires ztunnel together: config source, certificates, per-pod proxies reconciled against the
//! state, the admin/metrics/readiness endpoints, and the drain on shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ambit_identity::{CertificateAuthority, TrustBundle};
use ambit_model::State;
use hyper::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ambit_xds::client::{ClientConfig as XdsClientConfig, TokenSource, XdsClient};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::{
    certs::CertManager,
    certs::{CaClient, CaClientConfig},
    config::{CertSource, Config, ConfigSource, OperatorEndpoint},
    metrics::Metrics,
    netns::PodNetns,
    proxy::{self, PodProxy, ProxyInputs},
    source,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA certificate/key ({cert} / {key}): {reason}")]
    Ca {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("trust bundle {path}: {reason}")]
    Trust { path: PathBuf, reason: String },
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Certificates(Box<crate::certs::CertError>),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What a running pod proxy was started from; a change restarts it.
#[derive(PartialEq, Eq)]
pub(crate) struct PodSpec {
    /// The netns path from the config file, or `zds:<uid>` for a namespace handed over by fd.
    pub netns: PathBuf,
    pub ip: Option<IpAddr>,
}

/// The captured pods: keyed by `namespace/name` in config-file mode, by pod uid in ZDS mode.
#[derive(Default)]
pub(crate) struct Pods {
    pub running: BTreeMap<String, (PodSpec, PodProxy)>,
    pub failed: BTreeMap<String, String>,
}

pub struct Ztunnel {
    config: Config,
    inputs: Arc<ProxyInputs>,
    pods: Arc<Mutex<Pods>>,
    background: CancellationToken,
}

fn read(what: &'static str, path: &std::path::Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl Ztunnel {
    pub async fn start(config: Config) -> Result<Ztunnel, StartError> {
        let extra_roots = match &config.trust_bundle {
            Some(path) => TrustBundle::from_pem(&read("trust bundle", path)?)
                .map_err(|e| StartError::Trust {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
                .roots()
                .to_vec(),
            None => Vec::new(),
        };
        let certs = match &config.certs {
            CertSource::LocalCa { cert, key } => {
                let ca = CertificateAuthority::from_pem(&read("CA certificate", cert)?, &read("CA key", key)?)
                    .map_err(|e| StartError::Ca {
                        cert: cert.clone(),
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                let trust = trust_bundle(vec![ca.root_der()], extra_roots, cert)?;
                CertManager::new(ca, trust, config.cert_ttl)
            }
            CertSource::Operator(operator) => {
                let root_pem = read("mesh root certificate", &operator.root_cert)?;
                let root = TrustBundle::from_pem(&root_pem).map_err(|e| StartError::Trust {
                    path: operator.root_cert.clone(),
                    reason: e.to_string(),
                })?;
                let trust = trust_bundle(root.roots().to_vec(), extra_roots, &operator.root_cert)?;
                let client = CaClient::new(CaClientConfig {
                    address: operator.address.clone(),
                    root_pem: Some(root_pem),
                    server_name: Some(operator.server_name.clone()),
                    token_path: operator.token_file.clone(),
                    ttl: config.cert_ttl,
                })
                .map_err(|e| StartError::Certificates(Box::new(e)))?;
                CertManager::remote(client, trust)
            }
        };
        let background = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        // Whether the config source has delivered a first complete view; readiness waits for it.
        let synced = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(Arc::new(State::default()));
        match &config.source {
            ConfigSource::File { path, poll } => {
                let (state, text) = source::load(path)?;
                tx.send_replace(Arc::new(state));
                synced.store(true, Ordering::Release);
                tokio::spawn(source::watch_file(
                    path.clone(),
                    *poll,
                    text,
                    tx,
                    metrics.clone(),
                    background.clone(),
                ));
            }
            ConfigSource::Xds(operator) => {
                let client = XdsClient::new(xds_config(operator, &config.node)?, tx);
                let mut status = client.status();
                tokio::spawn(client.run(background.clone()));
                let synced = synced.clone();
                tokio::spawn(async move {
                    if status.wait_for(|s| s.synced).await.is_ok() {
                        tracing::info!("xDS synced");
                        synced.store(true, Ordering::Release);
                    }
                });
            }
        }
        let inputs = Arc::new(ProxyInputs::new(
            rx.clone(),
            Arc::new(certs),
            metrics.clone(),
            config.pool_idle_timeout,
        ));

        let bind = |what, addr| async move {
            ambit_telemetry::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let admin_listener = bind("admin", config.admin_addr).await?;
        let metrics_listener = bind("metrics", config.metrics_addr).await?;
        let readiness_listener = bind("readiness", config.readiness_addr).await?;

        let pods = Arc::new(Mutex::new(Pods::default()));
        let ready = Arc::new(AtomicBool::new(config.zds_socket.is_some()));
        reconcile(&inputs, &config, &pods, &ready);
        if let Some(socket) = &config.zds_socket {
            tokio::spawn(crate::inpod::run(
                socket.clone(),
                inputs.clone(),
                pods.clone(),
                background.clone(),
            ));
        }

        tokio::spawn(reconcile_loop(
            inputs.clone(),
            config.clone(),
            pods.clone(),
            ready.clone(),
            rx,
            background.clone(),
        ));
        tokio::spawn(ambit_telemetry::serve(
            admin_listener,
            config_dump_route(&inputs, &config.node, &pods),
            background.clone(),
        ));
        tokio::spawn(ambit_telemetry::serve(
            metrics_listener,
            metrics_route(&inputs),
            background.clone(),
        ));
        tokio::spawn(ambit_telemetry::serve(
            readiness_listener,
            readiness_route(ready, synced),
            background.clone(),
        ));
        tracing::info!(node = %config.node, admin = %config.admin_addr, metrics = %config.metrics_addr, readiness = %config.readiness_addr, "ztunnel started");
        Ok(Ztunnel {
            config,
            inputs,
            pods,
            background,
        })
    }

    /// Graceful drain: stop accepting, GOAWAY every HBONE connection, wait up to the drain
    /// timeout for open connections, then stop everything.
    pub async fn drain(self) {
        tracing::info!(timeout = ?self.config.drain_timeout, open = self.inputs.tracker.len(), "draining");
        self.inputs.drain.cancel();
        self.inputs.tracker.close();
        if tokio::time::timeout(self.config.drain_timeout, self.inputs.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.inputs.tracker.len(),
                "drain timeout: closing the remaining connections"
            );
        }
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).running.clear();
        self.background.cancel();
    }
}

/// Config-file mode: captures the pods of this node whose netns path the file gives.
fn reconcile(inputs: &Arc<ProxyInputs>, config: &Config, pods: &Mutex<Pods>, ready: &AtomicBool) {
    let state = inputs.state();
    if config.zds_socket.is_some() {
        // In-pod mode: the agent decides which pods are captured (crate::inpod).
        refresh_certificates(inputs, &state, &pods.lock().unwrap_or_else(|e| e.into_inner()));
        return;
    }
    let desired: BTreeMap<String, (PodSpec, Arc<ambit_model::Workload>)> = state
        .workloads_on_node(&config.node)
        .filter_map(|w| {
            let netns = w.netns.clone()?;
            let spec = PodSpec {
                netns,
                ip: w.addresses.first().copied(),
            };
            Some((w.key(), (spec, w.clone())))
        })
        .collect();
    let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
    pods.running.retain(|key, (spec, _)| {
        let keep = desired.get(key).is_some_and(|(d, _)| d == spec);
        if !keep {
            tracing::info!(workload = %key, "pod released: listeners closed");
        }
        keep
    });
    pods.failed.clear();
    for (key, (spec, workload)) in desired {
        if pods.running.contains_key(&key) {
            continue;
        }
        let started = PodNetns::open(&spec.netns)
            .map_err(|e| e.to_string())
            .and_then(|netns| {
                proxy::start_pod(inputs, &workload.namespace, &workload.name, netns).map_err(|e| e.to_string())
            });
        match started {
            Ok(p) => {
                pods.running.insert(key, (spec, p));
            }
            Err(e) => {
                tracing::error!(workload = %key, error = %e, "cannot capture pod; will retry");
                pods.failed.insert(key, e);
            }
        }
    }
    refresh_certificates(inputs, &state, &pods);
    ready.store(pods.failed.is_empty(), Ordering::Release);
}

/// Certificates follow the captured pods: fetched ahead of their first connection, forgotten
/// (and no longer renewed) once no captured pod uses the identity.
pub(crate) fn refresh_certificates(inputs: &ProxyInputs, state: &State, pods: &Pods) {
    let identities: BTreeSet<_> = pods
        .running
        .values()
        .filter_map(|(_, p)| {
            let (namespace, name) = p.key.split_once('/')?;
            proxy::identity_of(state.workload_by_name(namespace, name)?).ok()
        })
        .collect();
    inputs.certs.retain(|id| identities.contains(id));
    for id in &identities {
        inputs.certs.prefetch(id);
    }
}

async fn reconcile_loop(
    inputs: Arc<ProxyInputs>,
    config: Config,
    pods: Arc<Mutex<Pods>>,
    ready: Arc<AtomicBool>,
    mut rx: watch::Receiver<Arc<State>>,
    stop: CancellationToken,
) {
    loop {
        let retry = !pods.lock().unwrap_or_else(|e| e.into_inner()).failed.is_empty();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inputs.drain.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
        }
        reconcile(&inputs, &config, &pods, &ready);
    }
}

fn metrics_route(inputs: &Arc<ProxyInputs>) -> ambit_telemetry::Route {
    let inputs = inputs.clone();
    Arc::new(move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            inputs
                .metrics
                .hbone_connections
                .set(inputs.pool.connection_count() as i64);
            (StatusCode::OK, "text/plain; version=0.0.4", inputs.metrics.encode())
        }
        other => ambit_telemetry::not_found(other),
    })
}

fn readiness_route(ready: Arc<AtomicBool>, synced: Arc<AtomicBool>) -> ambit_telemetry::Route {
    Arc::new(move |path| match path {
        "/healthz/ready" if !synced.load(Ordering::Acquire) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: no config from the operator yet\n".into(),
        ),
        "/healthz/ready" if ready.load(Ordering::Acquire) => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/healthz/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: pods not captured yet\n".into(),
        ),
        other => ambit_telemetry::not_found(other),
    })
}

/// Builds the trust bundle from the mesh root(s) and the extra roots of `--trust-bundle`.
fn trust_bundle(
    mut roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
    path: &std::path::Path,
) -> Result<TrustBundle, StartError> {
    roots.extend(extra);
    TrustBundle::new(roots).map_err(|e| StartError::Trust {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The xDS client settings for reaching `operator` as the ztunnel of `node`.
fn xds_config(operator: &OperatorEndpoint, node: &str) -> Result<XdsClientConfig, StartError> {
    let mut xds = XdsClientConfig::new(operator.address.clone(), format!("ztunnel~{node}"));
    xds.token = TokenSource::File(operator.token_file.clone());
    xds.node_metadata.insert("NODE_NAME".to_owned(), node.to_owned());
    if operator.address.starts_with("https://") {
        let root = read("mesh root certificate", &operator.root_cert)?;
        xds.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name(operator.server_name.clone()),
        );
    }
    Ok(xds)
}

fn config_dump_route(inputs: &Arc<ProxyInputs>, node: &str, pods: &Arc<Mutex<Pods>>) -> ambit_telemetry::Route {
    let inputs = inputs.clone();
    let pods = pods.clone();
    let node = node.to_string();
    Arc::new(move |path| match path {
        "/config_dump" => {
            let state = inputs.state();
            let pods = pods.lock().unwrap_or_else(|e| e.into_inner());
            let captured: Vec<_> = pods
                .running
                .iter()
                .map(|(k, (spec, proxy))| serde_json::json!({ "key": k, "workload": proxy.key, "netns": spec.netns, "ip": spec.ip }))
                .collect();
            let dump = serde_json::json!({
                "node": node,
                "capturedPods": captured,
                "failedPods": pods.failed,
                "certificates": inputs.certs.summaries(),
                "hboneConnections": inputs.pool.connection_count(),
                "state": &*state,
            });
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            (StatusCode::OK, "application/json", body)
        }
        other => ambit_telemetry::not_found(other),
    })
}

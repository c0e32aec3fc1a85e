//! Wires ztunnel together: config source, certificates, per-pod proxies reconciled against the
//! state, the admin/metrics/readiness endpoints, and the drain on shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
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
struct PodSpec {
    netns: PathBuf,
    ip: Option<IpAddr>,
}

#[derive(Default)]
struct Pods {
    running: BTreeMap<String, (PodSpec, PodProxy)>,
    failed: BTreeMap<String, String>,
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
        let ready = Arc::new(AtomicBool::new(false));
        reconcile(&inputs, &config, &pods, &ready);

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

/// Reads the `--pod-netns-map` file (`<namespace>/<pod>: /run/netns/NAME`), the stand-in for
/// the pod netns paths the CNI will hand over (ZDS) and xDS does not carry. An unreadable file
/// counts as empty, with a warning: its pods then show as not captured.
fn pod_netns_map(path: &Path) -> BTreeMap<String, PathBuf> {
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_norway::from_str::<Option<BTreeMap<String, PathBuf>>>(&text).map_err(|e| e.to_string()));
    parsed
        .unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "cannot read the pod netns map");
            None
        })
        .unwrap_or_default()
}

fn reconcile(inputs: &Arc<ProxyInputs>, config: &Config, pods: &Mutex<Pods>, ready: &AtomicBool) {
    let node = config.node.as_str();
    let state = inputs.state();
    let netns_map = config.pod_netns_map.as_deref().map(|path| (path, pod_netns_map(path)));
    // With a netns map, a pod of this node it does not list is one ztunnel should capture but
    // cannot yet: reported (and retried) rather than skipped.
    let mut unmapped = BTreeMap::new();
    let desired: BTreeMap<String, (PodSpec, Arc<ambit_model::Workload>)> = state
        .workloads_on_node(node)
        .filter_map(|w| {
            let netns = w.netns.clone().or_else(|| {
                let (path, map) = netns_map.as_ref()?;
                let found = map.get(&w.key()).cloned();
                if found.is_none() {
                    let reason = format!("no network namespace for pod {} in {}", w.key(), path.display());
                    unmapped.insert(w.key(), reason);
                }
                found
            })?;
            Some((
                w.key(),
                (
                    PodSpec {
                        netns,
                        ip: w.addresses.first().copied(),
                    },
                    w.clone(),
                ),
            ))
        })
        .collect();
    // Certificates follow the pods: fetched ahead of their first connection, forgotten (and no
    // longer renewed) once no pod on this node uses the identity.
    let identities: BTreeSet<_> = desired
        .values()
        .filter_map(|(_, w)| proxy::identity_of(w).ok())
        .collect();
    inputs.certs.retain(|id| identities.contains(id));
    for id in &identities {
        inputs.certs.prefetch(id);
    }
    let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
    pods.running.retain(|key, (spec, _)| {
        let keep = desired.get(key).is_some_and(|(d, _)| d == spec);
        if !keep {
            tracing::info!(workload = %key, "pod released: listeners closed");
        }
        keep
    });
    pods.failed = unmapped;
    for (key, (spec, workload)) in desired {
        if pods.running.contains_key(&key) {
            continue;
        }
        match proxy::start_pod(inputs, &workload, &spec.netns) {
            Ok(p) => {
                pods.running.insert(key, (spec, p));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot capture pod; will retry");
                pods.failed.insert(key, e.to_string());
            }
        }
    }
    ready.store(pods.failed.is_empty(), Ordering::Release);
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
                .map(|(k, (spec, _))| serde_json::json!({ "workload": k, "netns": spec.netns, "ip": spec.ip }))
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

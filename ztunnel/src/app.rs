//! Wires ztunnel together: config source, certificates, per-pod proxies reconciled against the
//! state, the admin/metrics/readiness endpoints, and the drain on shutdown.

use std::{
    collections::BTreeMap,
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

use crate::{
    admin,
    certs::CertManager,
    config::Config,
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

fn read(what: &'static str, path: &PathBuf) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::Read {
        what,
        path: path.clone(),
        source,
    })
}

impl Ztunnel {
    pub async fn start(config: Config) -> Result<Ztunnel, StartError> {
        let ca = CertificateAuthority::from_pem(
            &read("CA certificate", &config.ca_cert)?,
            &read("CA key", &config.ca_key)?,
        )
        .map_err(|e| StartError::Ca {
            cert: config.ca_cert.clone(),
            key: config.ca_key.clone(),
            reason: e.to_string(),
        })?;
        let mut roots = vec![ca.root_der()];
        if let Some(path) = &config.trust_bundle {
            let extra = TrustBundle::from_pem(&read("trust bundle", path)?).map_err(|e| StartError::Trust {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            roots.extend(extra.roots().iter().cloned());
        }
        let trust = TrustBundle::new(roots).map_err(|e| StartError::Trust {
            path: config.ca_cert.clone(),
            reason: e.to_string(),
        })?;
        let (state, text) = source::load(&config.config_file)?;
        let (tx, rx) = watch::channel(Arc::new(state));
        let metrics = Arc::new(Metrics::new());
        let certs = Arc::new(CertManager::new(ca, trust, config.cert_ttl));
        let inputs = Arc::new(ProxyInputs::new(
            rx.clone(),
            certs,
            metrics.clone(),
            config.pool_idle_timeout,
        ));

        let bind = |what, addr| async move {
            admin::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let admin_listener = bind("admin", config.admin_addr).await?;
        let metrics_listener = bind("metrics", config.metrics_addr).await?;
        let readiness_listener = bind("readiness", config.readiness_addr).await?;

        let background = CancellationToken::new();
        let pods = Arc::new(Mutex::new(Pods::default()));
        let ready = Arc::new(AtomicBool::new(false));
        reconcile(&inputs, &config.node, &pods, &ready);

        tokio::spawn(source::watch_file(
            config.config_file.clone(),
            config.config_poll,
            text,
            tx,
            metrics.clone(),
            background.clone(),
        ));
        tokio::spawn(reconcile_loop(
            inputs.clone(),
            config.node.clone(),
            pods.clone(),
            ready.clone(),
            rx,
            background.clone(),
        ));
        tokio::spawn(admin::serve(
            admin_listener,
            config_dump_route(&inputs, &config.node, &pods),
            background.clone(),
        ));
        tokio::spawn(admin::serve(
            metrics_listener,
            metrics_route(&inputs),
            background.clone(),
        ));
        tokio::spawn(admin::serve(
            readiness_listener,
            readiness_route(ready),
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

fn reconcile(inputs: &Arc<ProxyInputs>, node: &str, pods: &Mutex<Pods>, ready: &AtomicBool) {
    let state = inputs.state();
    let desired: BTreeMap<String, (PodSpec, Arc<ambit_model::Workload>)> = state
        .workloads_on_node(node)
        .filter_map(|w| {
            let netns = w.netns.clone()?;
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
    node: String,
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
        reconcile(&inputs, &node, &pods, &ready);
    }
}

fn metrics_route(inputs: &Arc<ProxyInputs>) -> admin::Route {
    let inputs = inputs.clone();
    Arc::new(move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            inputs
                .metrics
                .hbone_connections
                .set(inputs.pool.connection_count() as i64);
            (StatusCode::OK, "text/plain; version=0.0.4", inputs.metrics.encode())
        }
        other => admin::not_found(other),
    })
}

fn readiness_route(ready: Arc<AtomicBool>) -> admin::Route {
    Arc::new(move |path| match path {
        "/healthz/ready" if ready.load(Ordering::Acquire) => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/healthz/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: pods not captured yet\n".into(),
        ),
        other => admin::not_found(other),
    })
}

fn config_dump_route(inputs: &Arc<ProxyInputs>, node: &str, pods: &Arc<Mutex<Pods>>) -> admin::Route {
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
        other => admin::not_found(other),
    })
}

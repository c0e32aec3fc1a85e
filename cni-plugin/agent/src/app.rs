//! Wires the agent together: pod registry, cluster source, the ZDS socket for ztunnel, the
//! plugin socket, installation into the CNI chain, the reconcile loop and monitoring.
//!
//! Stopping the agent leaves the plugin installed on purpose: while the agent is away, the
//! plugin fails every ADD (fail closed) instead of letting new pods start unmeshed. Only
//! [`uninstall`] takes Ambit off the node.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::{
    agent::Agent,
    config::Config,
    install,
    metrics::Metrics,
    registry::Registry,
    server,
    source::{ClusterSource, SourceError},
    ztunnels::Ztunnels,
};

/// How often the conflist entry is re-checked (the primary CNI may rewrite its file) and every
/// pod reconciled even without a change in the source.
const RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot listen on {what} {path}: {source}")]
    Socket {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Zds(#[from] ambit_zds::ZdsError),
    #[error("cannot listen on {addr} (monitoring): {source}")]
    Monitoring {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("node rules: {0}")]
    HostRules(String),
}

pub struct CniAgent {
    pub agent: Arc<Agent>,
    stop: CancellationToken,
}

impl CniAgent {
    pub async fn start(config: Config) -> Result<CniAgent, StartError> {
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::load(&config.state_dir.join("pods"))?;
        let (source, mut synced) = ClusterSource::start(&config.source, &config.node, stop.clone()).await?;
        let backend = config.backend;
        tokio::task::spawn_blocking(move || ambit_capture::install_host(backend))
            .await
            .map_err(|e| StartError::HostRules(e.to_string()))?
            .map_err(|e| StartError::HostRules(e.to_string()))?;

        let zds = ambit_zds::ZdsListener::bind(&config.zds_socket)?;
        let ztunnels = Ztunnels::new(config.zds_socket.clone(), config.ztunnel_timeout);
        let agent = Agent::new(
            config.backend,
            source.clone(),
            ztunnels.clone(),
            metrics.clone(),
            registry,
        );

        let plugin_socket = server::bind(&config.socket).map_err(|source| StartError::Socket {
            what: "plugin socket",
            path: config.socket.clone(),
            source,
        })?;
        tokio::spawn(server::serve(plugin_socket, agent.clone(), stop.clone()));

        let monitoring =
            ambit_telemetry::bind(config.monitoring_addr)
                .await
                .map_err(|source| StartError::Monitoring {
                    addr: config.monitoring_addr,
                    source,
                })?;
        let installed = Arc::new(AtomicBool::new(config.install.is_none()));
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(ambit_telemetry::serve(
            monitoring,
            monitoring_route(metrics.clone(), ztunnels.clone(), ready.clone()),
            stop.clone(),
        ));

        tracing::info!(node = %config.node, socket = %config.socket.display(), zds = %config.zds_socket.display(), backend = ?config.backend, "CNI agent started");
        let loop_agent = agent.clone();
        let loop_stop = stop.clone();
        let loop_ztunnels = ztunnels.clone();
        tokio::spawn(async move {
            if synced.wait_for(|s| *s).await.is_err() {
                return;
            }
            let mut changes = source.subscribe();
            // The pods recorded before a restart are enrolled again before any ztunnel gets a
            // snapshot: an early, empty one would make ztunnel drop them.
            let cluster = changes.borrow_and_update().clone();
            loop_agent.reconcile(&cluster).await;
            let snapshot_agent = loop_agent.clone();
            tokio::spawn(loop_ztunnels.serve(zds, Arc::new(move || snapshot_agent.snapshot()), loop_stop.clone()));
            loop {
                if let Some(install) = &config.install {
                    let ok = match install::install(install, &config.socket, &config.state_dir) {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "not installed into the CNI chain yet");
                            false
                        }
                    };
                    installed.store(ok, Ordering::Release);
                }
                let cluster = changes.borrow_and_update().clone();
                loop_agent.reconcile(&cluster).await;
                metrics.ztunnels.set(ztunnels.connected() as i64);
                ready.store(installed.load(Ordering::Acquire), Ordering::Release);
                tokio::select! {
                    _ = loop_stop.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(RESYNC) => {}
                }
            }
        });
        Ok(CniAgent { agent, stop })
    }

    pub fn stop(self) {
        self.stop.cancel();
    }
}

fn monitoring_route(metrics: Arc<Metrics>, ztunnels: Arc<Ztunnels>, ready: Arc<AtomicBool>) -> ambit_telemetry::Route {
    Arc::new(move |path| match path {
        "/metrics" => {
            metrics.ztunnels.set(ztunnels.connected() as i64);
            (StatusCode::OK, "text/plain; version=0.0.4", metrics.encode())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if ready.load(Ordering::Acquire) => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: source not synced or plugin not installed\n".into(),
        ),
        other => ambit_telemetry::not_found(other),
    })
}

/// Takes Ambit off the node: the conflist entry and plugin binary, the capture rules of every
/// recorded pod, and the node's probe rules.
pub fn uninstall(config: &Config) -> anyhow::Result<()> {
    if let Some(install) = &config.install {
        install::uninstall(install, &config.state_dir)?;
    }
    let registry_dir = config.state_dir.join("pods");
    if registry_dir.exists() {
        let mut registry = Registry::load(&registry_dir)?;
        let attachments: Vec<_> = registry.iter().cloned().collect();
        for attachment in attachments {
            match ambit_capture::remove(config.backend, &attachment.netns) {
                Ok(()) => {}
                Err(e) if e.is_netns_gone() => {}
                Err(e) => tracing::warn!(pod = %attachment.key(), error = %e, "cannot remove the capture rules"),
            }
            registry.remove(&attachment.key(), None)?;
        }
    }
    ambit_capture::remove_host(config.backend)?;
    Ok(())
}

//! Where enrollment is read from: the Kubernetes API (kube-runtime reflectors on Namespaces and
//! on the Pods of this node) or the local manifest directory. Either way the agent sees one
//! [`Cluster`] through a watch channel, plus a fresh read on demand: a pod's ADD must not be
//! decided on a view that has not caught up with the pod's creation yet.

use std::{path::PathBuf, sync::Arc, time::Duration};

use ambit_manifests::{Change, Directory, Document};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::enrollment::{Cluster, PodInfo};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifest directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
}

/// A manifest object the agent cares about.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<PodInfo>),
}

fn decode(document: &Document) -> Result<Option<Object>, String> {
    let group_less = !document.api_version.contains('/');
    match (group_less, document.kind.as_str()) {
        (true, "Namespace") => serde_json::from_value(document.value.clone())
            .map(|n| Some(Object::Namespace(Box::new(n))))
            .map_err(|e| e.to_string()),
        (true, "Pod") => serde_json::from_value::<Pod>(document.value.clone())
            .map(|p| Some(Object::Pod(Box::new(PodInfo::from_pod(&p, "default")))))
            .map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

enum Inner {
    Directory(Mutex<DirectoryView>),
    Kubernetes { client: Client },
}

struct DirectoryView {
    directory: Directory<Object>,
    objects: std::collections::BTreeMap<ambit_manifests::ObjectKey, Object>,
}

/// The agent's view of the cluster.
pub struct ClusterSource {
    node: String,
    inner: Inner,
    tx: watch::Sender<Arc<Cluster>>,
}

impl ClusterSource {
    /// Starts the source; `synced` turns true once a first complete view is in.
    pub async fn start(
        config: &crate::config::Source,
        node: &str,
        stop: CancellationToken,
    ) -> Result<(Arc<ClusterSource>, watch::Receiver<bool>), SourceError> {
        let (tx, _) = watch::channel(Arc::new(Cluster::default()));
        let (synced_tx, synced) = watch::channel(false);
        match config {
            crate::config::Source::Directory { path, poll } => {
                let source = Arc::new(ClusterSource {
                    node: node.to_owned(),
                    inner: Inner::Directory(Mutex::new(DirectoryView {
                        directory: Directory::new(path.clone(), Box::new(decode)),
                        objects: Default::default(),
                    })),
                    tx,
                });
                source.rescan().await?;
                synced_tx.send_replace(true);
                tokio::spawn(poll_directory(source.clone(), *poll, stop));
                Ok((source, synced))
            }
            crate::config::Source::Kubernetes { kubeconfig } => {
                let client = client(kubeconfig.as_ref()).await?;
                let source = Arc::new(ClusterSource {
                    node: node.to_owned(),
                    inner: Inner::Kubernetes { client: client.clone() },
                    tx,
                });
                tokio::spawn(reflect(source.clone(), client, synced_tx, stop));
                Ok((source, synced))
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Cluster>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Cluster> {
        self.tx.borrow().clone()
    }

    /// A view that includes everything the source of truth holds now about pod
    /// `namespace/name` and its namespace.
    pub async fn fresh(&self, namespace: &str, name: &str) -> Result<Arc<Cluster>, SourceError> {
        match &self.inner {
            Inner::Directory(_) => {
                self.rescan().await?;
                Ok(self.current())
            }
            Inner::Kubernetes { client } => {
                let mut cluster = (*self.current()).clone();
                let namespaces: Api<Namespace> = Api::all(client.clone());
                match namespaces.get_opt(namespace).await? {
                    Some(ns) => cluster.insert_namespace(&ns),
                    None => {
                        cluster.namespaces.remove(namespace);
                    }
                }
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                match pods.get_opt(name).await? {
                    Some(pod) => cluster.insert_pod(PodInfo::from_pod(&pod, namespace)),
                    None => {
                        cluster.pods.remove(&format!("{namespace}/{name}"));
                    }
                }
                Ok(Arc::new(cluster))
            }
        }
    }

    async fn rescan(&self) -> Result<(), SourceError> {
        let Inner::Directory(view) = &self.inner else {
            return Ok(());
        };
        let mut view = view.lock().await;
        let scan = view.directory.scan().map_err(|source| SourceError::Directory {
            path: view.directory.path().to_path_buf(),
            source,
        })?;
        for error in &scan.errors {
            tracing::warn!(file = %error.file.display(), line = error.line, reason = %error.reason, "manifest document skipped");
        }
        if scan.changes.is_empty() {
            return Ok(());
        }
        for change in scan.changes {
            match change {
                Change::Upsert(key, object) => {
                    view.objects.insert(key, object);
                }
                Change::Remove(key) => {
                    view.objects.remove(&key);
                }
            }
        }
        let mut cluster = Cluster::default();
        for object in view.objects.values() {
            match object {
                Object::Namespace(ns) => cluster.insert_namespace(ns),
                Object::Pod(pod) if pod.node.as_deref() == Some(self.node.as_str()) => {
                    cluster.insert_pod((**pod).clone());
                }
                Object::Pod(_) => {}
            }
        }
        self.publish(cluster);
        Ok(())
    }

    fn publish(&self, cluster: Cluster) {
        self.tx.send_if_modified(|current| {
            let changed = **current != cluster;
            if changed {
                *current = Arc::new(cluster);
            }
            changed
        });
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, SourceError> {
    let Some(path) = kubeconfig else {
        return Ok(Client::try_default().await?);
    };
    let error = |reason: String| SourceError::Kubeconfig {
        path: path.clone(),
        reason,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| error(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

async fn poll_directory(source: Arc<ClusterSource>, poll: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        if let Err(e) = source.rescan().await {
            tracing::warn!(error = %e, "cannot rescan; keeping the last view");
        }
    }
}

/// Keeps reflectors of Namespaces and of this node's Pods, publishing a new view on each event.
async fn reflect(source: Arc<ClusterSource>, client: Client, synced: watch::Sender<bool>, stop: CancellationToken) {
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let ns_stream = reflector(ns_writer, watcher(Api::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .map(|_| ());
    let pod_config = watcher::Config::default().fields(&format!("spec.nodeName={}", source.node));
    let pod_stream = reflector(pod_writer, watcher(Api::<Pod>::all(client), pod_config))
        .default_backoff()
        .map(|_| ());
    let mut events = std::pin::pin!(futures_util::stream::select(ns_stream, pod_stream));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => if event.is_none() { return },
        }
        let ready = namespaces.wait_until_ready();
        let pods_ready = pods.wait_until_ready();
        let both_ready = futures_util::future::join(ready, pods_ready);
        if futures_util::FutureExt::now_or_never(both_ready).is_none() {
            continue;
        }
        let mut cluster = Cluster::default();
        for ns in namespaces.state() {
            cluster.insert_namespace(&ns);
        }
        for pod in pods.state() {
            cluster.insert_pod(PodInfo::from_pod(&pod, "default"));
        }
        source.publish(cluster);
        synced.send_if_modified(|s| !std::mem::replace(s, true));
    }
}

//! The agent's core: answers the plugin's pod events and keeps every pod of the node in the
//! state its labels ask for — enrolled (capture rules in the pod, probe exemption on the node,
//! handed to ztunnel) or not (none of ours left). Pod operations are serialized by one lock;
//! they are short and rare next to the traffic they set up.

use std::{
    collections::BTreeMap,
    fs::File,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use ambit_capture::Backend;
use ambit_cni::protocol::{PodCommand, PodReply, PodRequest};
use ambit_proto::istio::workload::zds::WorkloadInfo;

use crate::{
    enrollment::{Cluster, Decision, PodInfo},
    metrics::Metrics,
    registry::{Attachment, Registry},
    source::ClusterSource,
    ztunnels::{HandOverError, HandedPod, Ztunnels},
};

/// CNI error codes the agent answers with (CNI spec: 11 = try again later).
const TRY_AGAIN_LATER: u32 = 11;
/// Our own code (the spec leaves 100+ to plugins): the pod's rules could not be written.
const CAPTURE_FAILED: u32 = 101;

/// An enrolled pod as the agent holds it.
#[derive(Debug, Clone)]
struct Enrolled {
    handed: HandedPod,
    ips: Vec<IpAddr>,
}

pub struct Agent {
    backend: Backend,
    source: Arc<ClusterSource>,
    ztunnels: Arc<Ztunnels>,
    metrics: Arc<Metrics>,
    registry: tokio::sync::Mutex<Registry>,
    /// Read by the ZDS snapshot of a connecting ztunnel, hence a plain mutex of its own.
    enrolled: Mutex<BTreeMap<String, Enrolled>>,
    /// Pods (with the addresses looked for) whose namespace discovery did not find; not looked
    /// for again until their addresses change.
    undiscovered: Mutex<BTreeMap<String, Vec<IpAddr>>>,
}

impl Agent {
    pub fn new(
        backend: Backend,
        source: Arc<ClusterSource>,
        ztunnels: Arc<Ztunnels>,
        metrics: Arc<Metrics>,
        registry: Registry,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            backend,
            source,
            ztunnels,
            metrics,
            registry: tokio::sync::Mutex::new(registry),
            enrolled: Mutex::new(BTreeMap::new()),
            undiscovered: Mutex::new(BTreeMap::new()),
        })
    }

    fn enrolled(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Enrolled>> {
        self.enrolled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every enrolled pod, for a connecting ztunnel's snapshot.
    pub fn snapshot(&self) -> Vec<HandedPod> {
        self.enrolled().values().map(|e| e.handed.clone()).collect()
    }

    /// Answers one plugin request.
    pub async fn handle(&self, request: PodRequest) -> PodReply {
        let key = request.pod_key();
        let command = request.command;
        let reply = match command {
            PodCommand::Add => self.add(request).await,
            PodCommand::Del => self.delete(request).await,
            PodCommand::Check => self.check(request).await,
        };
        let outcome = match &reply {
            PodReply::Ok { enrolled: true } => "enrolled",
            PodReply::Ok { enrolled: false } => "ok",
            PodReply::Error { .. } => "error",
        };
        self.metrics.cni_request(command, outcome);
        match &reply {
            PodReply::Error { code, msg, .. } => {
                tracing::warn!(pod = %key, ?command, code, %msg, "CNI request refused")
            }
            PodReply::Ok { enrolled } => tracing::info!(pod = %key, ?command, enrolled, "CNI request done"),
        }
        reply
    }

    async fn add(&self, request: PodRequest) -> PodReply {
        let Some(netns) = request.netns.clone() else {
            return error(4, "ADD without a network namespace (CNI_NETNS)", String::new());
        };
        let cluster = match self.source.fresh(&request.pod_namespace, &request.pod_name).await {
            Ok(c) => c,
            Err(e) => return error(TRY_AGAIN_LATER, "cannot read the pod's enrollment", e.to_string()),
        };
        let decision = cluster.decide(&request.pod_namespace, &request.pod_name);
        if decision == Decision::Unknown {
            return error(
                TRY_AGAIN_LATER,
                &format!(
                    "pod {}/{} is not known yet but its namespace is in the mesh; not starting it unmeshed",
                    request.pod_namespace, request.pod_name
                ),
                String::new(),
            );
        }
        let uid = cluster
            .pods
            .get(&request.pod_key())
            .and_then(|p| p.uid.clone())
            .or(request.pod_uid.clone())
            .unwrap_or_else(|| request.pod_key());
        let attachment = Attachment {
            namespace: request.pod_namespace,
            name: request.pod_name,
            uid,
            container_id: request.container_id,
            netns,
            ips: request.ips,
        };
        let mut registry = self.registry.lock().await;
        // A new sandbox of a pod replaces the old one: release what the old one held first.
        if registry.get(&attachment.key()).is_some_and(|old| old != &attachment) {
            self.unenroll(&attachment.key()).await;
        }
        if let Err(e) = registry.upsert(attachment.clone()) {
            return error(TRY_AGAIN_LATER, "cannot record the pod", e.to_string());
        }
        match decision {
            Decision::Enroll(pod) => match self.enroll(&attachment, &pod).await {
                Ok(()) => PodReply::Ok { enrolled: true },
                Err(reply) => reply,
            },
            _ => {
                self.unenroll(&attachment.key()).await;
                PodReply::Ok { enrolled: false }
            }
        }
    }

    async fn delete(&self, request: PodRequest) -> PodReply {
        let key = request.pod_key();
        let mut registry = self.registry.lock().await;
        let current = registry.get(&key).cloned();
        if current.as_ref().is_some_and(|a| !a.is_sandbox(&request.container_id)) {
            // A late DEL of a sandbox the pod already replaced: the live one keeps its capture.
            return PodReply::Ok { enrolled: false };
        }
        self.unenroll(&key).await;
        // A DEL for a sandbox never recorded (agent state lost): its netns may still hold rules.
        if current.is_none()
            && let Some(netns) = &request.netns
        {
            self.remove_rules(&key, netns).await;
        }
        if let Err(e) = registry.remove(&key, Some(&request.container_id)) {
            return error(TRY_AGAIN_LATER, "cannot update the pod registry", e.to_string());
        }
        PodReply::Ok { enrolled: false }
    }

    async fn check(&self, request: PodRequest) -> PodReply {
        let key = request.pod_key();
        if !self.enrolled().contains_key(&key) {
            return PodReply::Ok { enrolled: false };
        }
        let Some(netns) = request.netns else {
            return PodReply::Ok { enrolled: true };
        };
        let backend = self.backend;
        let installed = tokio::task::spawn_blocking(move || ambit_capture::installed(backend, &netns)).await;
        match installed {
            Ok(Ok(true)) if self.ztunnels.connected() > 0 => PodReply::Ok { enrolled: true },
            Ok(Ok(true)) => error(TRY_AGAIN_LATER, "no ztunnel is connected", String::new()),
            Ok(Ok(false)) => error(
                CAPTURE_FAILED,
                &format!("the capture rules of pod {key} are missing"),
                String::new(),
            ),
            Ok(Err(e)) => error(CAPTURE_FAILED, "cannot read the capture rules", e.to_string()),
            Err(e) => error(CAPTURE_FAILED, "cannot read the capture rules", e.to_string()),
        }
    }

    /// Captures the pod and hands it to ztunnel. The rules go in first: should the hand-over
    /// fail, the pod's traffic stops rather than flowing unmeshed.
    async fn enroll(&self, attachment: &Attachment, pod: &PodInfo) -> Result<(), PodReply> {
        let key = attachment.key();
        let backend = self.backend;
        let netns = attachment.netns.clone();
        let ips = if attachment.ips.is_empty() {
            pod.ips.clone()
        } else {
            attachment.ips.clone()
        };
        let probe_ips = ips.clone();
        let installed = tokio::task::spawn_blocking(move || -> Result<File, String> {
            ambit_capture::install(backend, &netns).map_err(|e| e.to_string())?;
            for ip in &probe_ips {
                ambit_capture::add_probe_target(backend, *ip).map_err(|e| e.to_string())?;
            }
            File::open(&netns).map_err(|e| format!("cannot open {}: {e}", netns.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let file = installed.map_err(|e| error(CAPTURE_FAILED, &format!("cannot capture pod {key}"), e))?;
        let handed = HandedPod {
            uid: attachment.uid.clone(),
            info: WorkloadInfo {
                name: attachment.name.clone(),
                namespace: attachment.namespace.clone(),
                service_account: pod.service_account.clone(),
            },
            netns: Arc::new(file),
        };
        self.enrolled().insert(
            key.clone(),
            Enrolled {
                handed: handed.clone(),
                ips,
            },
        );
        self.metrics.enrolled.set(self.enrolled().len() as i64);
        self.ztunnels.add(handed).await.map_err(|e| {
            let code = match e {
                HandOverError::Refused { .. } => CAPTURE_FAILED,
                _ => TRY_AGAIN_LATER,
            };
            error(code, &format!("pod {key} was not taken by ztunnel"), e.to_string())
        })?;
        tracing::info!(pod = %key, netns = %attachment.netns.display(), "pod enrolled");
        Ok(())
    }

    /// Undoes [`Self::enroll`] for `key` if it was enrolled: rules out of the pod, probe
    /// exemption off, ztunnel told. Best effort; failures are logged (a gone netns is fine).
    async fn unenroll(&self, key: &str) {
        let Some(enrolled) = self.enrolled().remove(key) else {
            return;
        };
        self.metrics.enrolled.set(self.enrolled().len() as i64);
        let netns =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&*enrolled.handed.netns).to_string());
        self.remove_rules(key, &netns).await;
        let backend = self.backend;
        let ips = enrolled.ips.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ip in ips {
                if let Err(e) = ambit_capture::remove_probe_target(backend, ip) {
                    tracing::warn!(%ip, error = %e, "cannot remove the probe exemption");
                }
            }
        })
        .await;
        if let Err(e) = self.ztunnels.delete(&enrolled.handed.uid).await {
            tracing::warn!(pod = %key, error = %e, "ztunnel did not acknowledge the removal");
        }
        tracing::info!(pod = %key, "pod released");
    }

    async fn remove_rules(&self, key: &str, netns: &Path) {
        let backend = self.backend;
        let netns = netns.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || ambit_capture::remove(backend, &netns)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_netns_gone() => {}
            Ok(Err(e)) => tracing::warn!(pod = %key, error = %e, "cannot remove the capture rules"),
            Err(e) => tracing::warn!(pod = %key, error = %e, "cannot remove the capture rules"),
        }
    }

    /// Brings every recorded pod in line with `cluster`: enrolls the ones whose labels now ask
    /// for it, releases the others, and forgets pods whose namespace is gone.
    pub async fn reconcile(&self, cluster: &Cluster) {
        let mut registry = self.registry.lock().await;
        let attachments: Vec<Attachment> = registry.iter().cloned().collect();
        for attachment in attachments {
            let key = attachment.key();
            if !attachment.netns.exists() {
                tracing::info!(pod = %key, netns = %attachment.netns.display(), "network namespace gone; forgetting the pod");
                self.unenroll(&key).await;
                if let Err(e) = registry.remove(&key, None) {
                    tracing::warn!(pod = %key, error = %e, "cannot update the pod registry");
                }
                continue;
            }
            let is_enrolled = self.enrolled().contains_key(&key);
            match cluster.decide(&attachment.namespace, &attachment.name) {
                Decision::Enroll(pod) if !is_enrolled => {
                    if let Err(PodReply::Error { msg, details, .. }) = self.enroll(&attachment, &pod).await {
                        // Stays enrolled (rules in, traffic held) until ztunnel takes it.
                        tracing::warn!(pod = %key, %msg, %details, "enrollment incomplete");
                    }
                }
                Decision::Skip(reason) if is_enrolled => {
                    tracing::info!(pod = %key, reason, "leaving the mesh");
                    self.unenroll(&key).await;
                }
                _ => {}
            }
        }
        self.discover(cluster, &mut registry).await;
        self.prune_probe_targets().await;
    }

    /// Drops node probe exemptions no enrolled pod holds (pods that went away while the agent
    /// was down keep theirs otherwise).
    async fn prune_probe_targets(&self) {
        let wanted: Vec<IpAddr> = self.enrolled().values().flat_map(|e| e.ips.clone()).collect();
        let backend = self.backend;
        let pruned = tokio::task::spawn_blocking(move || -> Result<(), ambit_capture::Error> {
            for ip in ambit_capture::probe_targets(backend)? {
                if !wanted.contains(&ip) {
                    ambit_capture::remove_probe_target(backend, ip)?;
                    tracing::info!(%ip, "stale probe exemption removed");
                }
            }
            Ok(())
        })
        .await;
        match pruned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the node's probe exemptions"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the node's probe exemptions"),
        }
    }

    /// Enrolls pods that belong in the mesh but never came through the plugin (they predate
    /// Ambit on this node), finding their namespace by address.
    async fn discover(&self, cluster: &Cluster, registry: &mut Registry) {
        for pod in cluster.pods.values() {
            let key = pod.key();
            if pod.ips.is_empty() || registry.get(&key).is_some() {
                continue;
            }
            let Decision::Enroll(pod) = cluster.decide(&pod.namespace, &pod.name) else {
                continue;
            };
            if self.undiscovered.lock().unwrap_or_else(|e| e.into_inner()).get(&key) == Some(&pod.ips) {
                continue;
            }
            let ips = pod.ips.clone();
            let found = tokio::task::spawn_blocking(move || crate::discover::find_netns(&ips)).await;
            let netns = match found {
                Ok(Ok(Some(netns))) => netns,
                Ok(Ok(None)) => {
                    tracing::warn!(pod = %key, ips = ?pod.ips, "enrolled pod without a known network namespace on this node; it is captured when it restarts");
                    self.undiscovered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, pod.ips.clone());
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(pod = %key, error = %e, "cannot look for the pod's network namespace");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "cannot look for the pod's network namespace");
                    continue;
                }
            };
            tracing::info!(pod = %key, netns = %netns.display(), "found a running pod's network namespace");
            self.undiscovered.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            let attachment = Attachment {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone().unwrap_or_else(|| key.clone()),
                container_id: String::new(),
                netns,
                ips: pod.ips.clone(),
            };
            if let Err(e) = registry.upsert(attachment.clone()) {
                tracing::warn!(pod = %key, error = %e, "cannot record the pod");
                continue;
            }
            if let Err(PodReply::Error { msg, details, .. }) = self.enroll(&attachment, &pod).await {
                tracing::warn!(pod = %key, %msg, %details, "enrollment incomplete");
            }
        }
    }
}

fn error(code: u32, msg: &str, details: String) -> PodReply {
    PodReply::Error {
        code,
        msg: msg.to_owned(),
        details,
    }
}

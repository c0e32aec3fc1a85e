//! In-pod mode: the node agent hands each enrolled pod's network namespace over ZDS, and
//! ztunnel opens the pod's listeners inside it before acknowledging (so the agent's ADD only
//! succeeds once the pod's traffic has somewhere to go). A lost connection keeps every pod
//! running and reconnects; the agent's snapshot on the new connection then says which pods
//! still exist.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use ambit_zds::{ZdsClient, ZdsError, ZdsRequest};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{PodSpec, Pods},
    netns::PodNetns,
    proxy::{self, ProxyInputs},
};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Receives pods from the agent at `socket` until `stop`.
pub(crate) async fn run(socket: PathBuf, inputs: Arc<ProxyInputs>, pods: Arc<Mutex<Pods>>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = ZdsClient::connect(&socket) => c,
        };
        match connected {
            Ok(client) => {
                tracing::info!(socket = %socket.display(), "connected to the node agent (ZDS)");
                backoff = Duration::from_millis(50);
                warned = false;
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = session(client, &inputs, &pods) => r,
                };
                tracing::warn!(error = %result, "ZDS connection lost; pods keep running, reconnecting");
            }
            Err(e) if !warned => {
                tracing::warn!(socket = %socket.display(), error = %e, "cannot reach the node agent; retrying");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "node agent still unreachable"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn lock(pods: &Mutex<Pods>) -> std::sync::MutexGuard<'_, Pods> {
    pods.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection: answers requests until it breaks, and returns why.
async fn session(mut client: ZdsClient, inputs: &Arc<ProxyInputs>, pods: &Mutex<Pods>) -> ZdsError {
    // Pods named by the snapshot so far; `None` once it is complete.
    let mut snapshot: Option<BTreeSet<String>> = Some(BTreeSet::new());
    loop {
        let request = match client.next().await {
            Ok(r) => r,
            Err(e) if e.protocol_error().is_some() => {
                // A request we cannot use: refuse it and go on, as the agent expects an answer.
                tracing::warn!(error = %e, "bad ZDS request refused");
                if let Err(e) = client.nack(&e.to_string()).await {
                    return e;
                }
                continue;
            }
            Err(e) => return e,
        };
        if let (Some(seen), Some(uid)) = (snapshot.as_mut(), request.uid()) {
            seen.insert(uid.to_owned());
        }
        let outcome = match request {
            ZdsRequest::Add { uid, info, netns } => add(inputs, pods, uid, info, netns),
            ZdsRequest::Keep { uid } => match lock(pods).running.contains_key(&uid) {
                true => Ok(()),
                false => Err(format!("pod {uid} is not proxied here; cannot keep it")),
            },
            ZdsRequest::Del { uid } => {
                if let Some((_, proxy)) = lock(pods).running.remove(&uid) {
                    tracing::info!(%uid, pod = %proxy.key, "pod released: listeners closed");
                }
                Ok(())
            }
            ZdsRequest::SnapshotSent => {
                let seen = snapshot.take().unwrap_or_default();
                lock(pods).running.retain(|uid, (_, proxy)| {
                    let keep = seen.contains(uid);
                    if !keep {
                        tracing::info!(%uid, pod = %proxy.key, "pod not in the agent's snapshot: listeners closed");
                    }
                    keep
                });
                tracing::info!(pods = seen.len(), "ZDS snapshot applied");
                Ok(())
            }
            _ => Err("unsupported ZDS request".to_owned()),
        };
        let sent = match outcome {
            Ok(()) => client.ack().await,
            Err(reason) => {
                tracing::warn!(%reason, "ZDS request refused");
                client.nack(&reason).await
            }
        };
        if let Err(e) = sent {
            return e;
        }
    }
}

fn add(
    inputs: &Arc<ProxyInputs>,
    pods: &Mutex<Pods>,
    uid: String,
    info: ambit_zds::WorkloadInfo,
    netns: std::os::fd::OwnedFd,
) -> Result<(), String> {
    if info.namespace.is_empty() || info.name.is_empty() {
        return Err(format!("pod {uid}: workload info without a name or namespace"));
    }
    let label = PathBuf::from(format!("zds:{uid}"));
    let spec = PodSpec {
        netns: label.clone(),
        ip: None,
    };
    let mut pods = lock(pods);
    if pods
        .running
        .get(&uid)
        .is_some_and(|(_, proxy)| proxy.key == format!("{}/{}", info.namespace, info.name))
    {
        // Already proxied (a reconnect's snapshot): its listeners are open in the same pod.
        return Ok(());
    }
    let netns = PodNetns::from_fd(netns, label).map_err(|e| e.to_string())?;
    let proxy = proxy::start_pod(inputs, &info.namespace, &info.name, netns).map_err(|e| e.to_string())?;
    pods.running.insert(uid, (spec, proxy));
    Ok(())
}

//! Writes the index's desired status conditions onto the Ambit CRD objects (Kubernetes mode, on
//! the leader only). Pending statuses are kept while this replica follows, and written when it
//! leads, so a new leader catches up. Writes are server-side applies of `.status.conditions` on
//! the status subresource; `lastTransitionTime` moves only when a condition's status changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_crds::{AuthorizationPolicy, FaultInjection, PeerAuthentication, TrafficPolicy};
use ambit_index::{Kind, ObjectKey, ObjectStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The field manager of the operator's status writes.
pub const FIELD_MANAGER: &str = "ambit-operator";

/// A status to write; `None` when the object is gone and nothing needs writing.
pub type StatusUpdate = (ObjectKey, Option<Arc<ObjectStatus>>);

fn api_resource(kind: Kind) -> Option<ApiResource> {
    Some(match kind {
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        Kind::TrafficPolicy => ApiResource::erase::<TrafficPolicy>(&()),
        Kind::FaultInjection => ApiResource::erase::<FaultInjection>(&()),
        _ => return None,
    })
}

/// Writes one object's conditions.
pub async fn write(client: &Client, key: &ObjectKey, status: &ObjectStatus) -> Result<(), kube::Error> {
    let Some(resource) = api_resource(key.kind) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let Some(current) = api.get_opt(&key.name).await? else {
        return Ok(());
    };
    let previous: Vec<Condition> = current
        .data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let now = Time(Timestamp::now());
    let conditions: Vec<Condition> = status
        .conditions
        .iter()
        .map(|c| c.to_condition(status.observed_generation, &previous, &now))
        .collect();
    if same_conditions(&previous, &conditions) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "status": { "conditions": conditions },
    });
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Whether writing would change nothing but timestamps the writer keeps anyway.
fn same_conditions(previous: &[Condition], next: &[Condition]) -> bool {
    previous.len() == next.len()
        && previous.iter().zip(next).all(|(a, b)| {
            a.type_ == b.type_
                && a.status == b.status
                && a.reason == b.reason
                && a.message == b.message
                && a.observed_generation == b.observed_generation
        })
}

/// Receives status updates and writes them while `leading` says so, until `stop`.
pub async fn run(
    client: Client,
    mut updates: mpsc::UnboundedReceiver<Vec<StatusUpdate>>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut pending: BTreeMap<ObjectKey, Arc<ObjectStatus>> = BTreeMap::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            batch = updates.recv() => match batch {
                Some(batch) => {
                    for (key, status) in batch {
                        match status {
                            Some(status) => pending.insert(key, status),
                            None => pending.remove(&key),
                        };
                    }
                }
                None => return,
            },
            changed = leading.changed() => if changed.is_err() { return },
            _ = retry => retry_at = None,
        }
        if !*leading.borrow() || pending.is_empty() || retry_at.is_some() {
            continue;
        }
        let mut failed = BTreeMap::new();
        for (key, status) in std::mem::take(&mut pending) {
            if let Err(e) = write(&client, &key, &status).await {
                tracing::warn!(object = %key, error = %e, "cannot write status; will retry");
                failed.insert(key, status);
            }
        }
        if !failed.is_empty() {
            pending = failed;
            retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
}

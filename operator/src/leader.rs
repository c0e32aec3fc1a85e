//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas can run:
//! every replica serves xDS and the CA, only the leader writes to the API (status conditions,
//! root ConfigMaps). The lease is taken when absent or expired and renewed well inside its
//! duration; every write is a compare-and-swap on the Lease's resourceVersion, so two replicas
//! never both believe they hold it for longer than one lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's name (the pod name in Kubernetes), written as `holderIdentity`.
    pub identity: String,
    /// How long a lease stays valid without renewal; another replica takes over after it.
    pub duration: Duration,
    /// How often the holder renews (and others retry); well under `duration`.
    pub retry: Duration,
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease until at least the returned renew time + duration.
    Leading,
    /// Another replica holds a live lease.
    Following,
}

/// Tries to acquire or renew the lease once.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !mine && !expired(spec, now) {
        return Ok(Attempt::Following);
    }
    if !mine {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // `replace` carries the resourceVersion we read: a concurrent writer makes it fail with 409.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Attempt::Leading),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
        Err(e) => Err(e),
    }
}

/// Whether the lease's holder has let it lapse (or it never had one).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    now.as_second() > renewed.as_second().saturating_add(duration)
}

/// Keeps trying to lead until `stop`, publishing whether this replica leads on `leading`. A
/// leader that cannot renew steps down once its own lease would have expired, before any other
/// replica may take over.
pub async fn run(api: Api<Lease>, config: LeaseConfig, leading: watch::Sender<bool>, stop: CancellationToken) {
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire(&api, &config).await {
            Ok(Attempt::Leading) => {
                last_renewed = Some(tokio::time::Instant::now());
                if !*leading.borrow() {
                    tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                }
                leading.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(Attempt::Following) => {
                last_renewed = None;
                if leading.send_if_modified(|l| std::mem::replace(l, false)) {
                    tracing::warn!(lease = %config.name, "lost the lease to another replica");
                }
            }
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "lease request failed");
                // Step down a little before the lease could have lapsed for the others.
                let stale = last_renewed.is_none_or(|t| t.elapsed() + config.retry >= config.duration);
                if stale && leading.send_if_modified(|l| std::mem::replace(l, false)) {
                    tracing::warn!(lease = %config.name, "could not renew the lease in time; stepped down");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.retry) => {}
        }
    }
    if *leading.borrow() {
        release(&api, &config).await;
        leading.send_replace(false);
    }
}

/// Gives the lease up on shutdown so another replica need not wait for it to expire.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(e) = api.replace(&config.name, &PostParams::default(), &lease).await {
        tracing::debug!(lease = %config.name, error = %e, "could not release the lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_seconds_ago: i64, duration: i32) -> LeaseSpec {
        let renewed = Timestamp::from_second(Timestamp::now().as_second() - renewed_seconds_ago).expect("timestamp");
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration() {
        let now = Timestamp::now();
        assert!(!expired(&spec(Some("a"), 5, 15), now));
        assert!(expired(&spec(Some("a"), 20, 15), now));
        assert!(expired(&spec(None, 0, 15), now));
        assert!(expired(&spec(Some(""), 0, 15), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}

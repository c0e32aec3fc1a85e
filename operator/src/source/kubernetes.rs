//! The Kubernetes source: one kube-runtime watcher per kind, each event turned into the same
//! upserts and removals the directory source produces. A relist (after a watch expired or the
//! connection dropped) removes the objects that disappeared meanwhile, so nothing stale survives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use futures_util::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ambit_manifests::{Change, ObjectKey};

/// What a watcher sends the operator's index loop.
#[derive(Debug)]
pub enum Event<T> {
    Change(Change<T>),
    /// The first complete list of one kind has been delivered.
    Synced(&'static str),
}

/// The key of a Kubernetes object, as the directory source builds it.
pub fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> ObjectKey {
    ObjectKey {
        group: K::group(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
    }
}

/// Watches every object of kind `K` that `api` reaches until `stop`, sending each change through
/// `wrap` to `tx`.
pub async fn watch<K, T>(
    api: Api<K>,
    kind: &'static str,
    wrap: fn(K) -> T,
    tx: mpsc::Sender<Event<T>>,
    stop: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    // Keys delivered so far with their resourceVersion (a relist re-delivers unchanged objects;
    // they are not sent again), and the keys seen in the relist in progress.
    let mut known: BTreeMap<ObjectKey, Option<String>> = BTreeMap::new();
    let mut relisted: Option<BTreeSet<ObjectKey>> = None;
    let mut synced = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => match event {
                Some(e) => e,
                None => return,
            },
        };
        let mut out = Vec::new();
        match event {
            Ok(watcher::Event::Init) => relisted = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(object)) => {
                let key = key_of(&object);
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(key.clone());
                }
                let version = object.resource_version();
                if version.is_none() || known.get(&key) != Some(&version) {
                    known.insert(key.clone(), version);
                    out.push(Event::Change(Change::Upsert(key, wrap(object))));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let seen = relisted.take().unwrap_or_default();
                known.retain(|key, _| {
                    let kept = seen.contains(key);
                    if !kept {
                        out.push(Event::Change(Change::Remove(key.clone())));
                    }
                    kept
                });
                if !synced {
                    synced = true;
                    out.push(Event::Synced(kind));
                }
            }
            Ok(watcher::Event::Apply(object)) => {
                let key = key_of(&object);
                known.insert(key.clone(), object.resource_version());
                out.push(Event::Change(Change::Upsert(key, wrap(object))));
            }
            Ok(watcher::Event::Delete(object)) => {
                let key = key_of(&object);
                known.remove(&key);
                out.push(Event::Change(Change::Remove(key)));
            }
            // The kind is not served (an optional CRD, e.g. Gateway API, not installed): there
            // are no such objects, so the view of it is complete and empty. Without this the
            // operator would never sync and never serve xDS. The backoff keeps retrying, so
            // objects show up once the CRD is installed.
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.code == 404 => {
                for key in std::mem::take(&mut known).into_keys() {
                    out.push(Event::Change(Change::Remove(key)));
                }
                if !synced {
                    synced = true;
                    tracing::info!(
                        kind,
                        "not served by the API server (CRD not installed?); none indexed until it is"
                    );
                    out.push(Event::Synced(kind));
                } else {
                    tracing::debug!(kind, "still not served by the API server");
                }
            }
            // The backoff retries; say why the view of this kind may be stale meanwhile.
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
        for event in out {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

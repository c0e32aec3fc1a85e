//! The resource store the operator writes and every stream reads: named resources per type URL,
//! each with a content-hash version and the generation of its last change, plus a bounded change
//! log so a stream finds what changed since its cursor in O(changes), not O(resources).
//!
//! It knows nothing of streams or subscriptions beyond the lookups [`super::stream`] needs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ambit_proto::envoy::service::discovery::v3::Resource;
use bytes::Bytes;
use prost_types::Any;
use tokio::sync::watch;

use super::response;

/// Named resources per type URL, shared by the operator (writer) and the server (readers).
#[derive(Debug)]
pub struct ResourceStore {
    types: Mutex<HashMap<String, TypeState>>,
    log_capacity: usize,
    /// Bumped once per mutating call; the debouncer turns bursts of bumps into pushes.
    changed: watch::Sender<u64>,
}

/// One type URL's resources and change log.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    pub(crate) resources: HashMap<Arc<str>, Stored>,
    /// `(generation, name)` of every change, oldest first, generations strictly increasing.
    log: VecDeque<(u64, Arc<str>)>,
    /// Generation of the latest change.
    pub(crate) generation: u64,
    /// Changes at or below this generation were dropped from the log.
    floor: u64,
}

/// A stored resource, ready to send: encoded once here, copied as is into every response.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) version: String,
    /// The `Resource` as an element of a response's `resources` ([`response::encode_resource`]).
    pub(crate) encoded: Bytes,
}

/// What changed after a cursor.
#[derive(Debug, Default)]
pub(crate) struct Changes<'a> {
    pub(crate) upserted: Vec<&'a Stored>,
    pub(crate) removed: Vec<Arc<str>>,
}

impl ResourceStore {
    /// A store whose per-type change log keeps the last `log_capacity` changes; a stream further
    /// behind than that is reset, and its client resyncs with `initial_resource_versions`.
    pub fn new(log_capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            types: Mutex::new(HashMap::new()),
            log_capacity: log_capacity.max(1),
            changed: watch::Sender::new(0),
        })
    }

    /// Inserts or replaces `name`; returns whether its content changed.
    pub fn upsert(&self, type_url: &str, name: &str, resource: Any) -> bool {
        self.apply(type_url, [(name.to_owned(), resource)], std::iter::empty::<String>()) > 0
    }

    /// Removes `name`; returns whether it was there.
    pub fn remove(&self, type_url: &str, name: &str) -> bool {
        self.apply(type_url, std::iter::empty(), [name.to_owned()]) > 0
    }

    /// Applies a batch of upserts and removals under one lock and one notification; returns how
    /// many resources actually changed. Unchanged content (same bytes) is not a change.
    pub fn apply(
        &self,
        type_url: &str,
        upserts: impl IntoIterator<Item = (String, Any)>,
        removals: impl IntoIterator<Item = String>,
    ) -> usize {
        let mut changed = 0;
        {
            let mut types = self.lock();
            let state = types.entry(type_url.to_owned()).or_default();
            for (name, any) in upserts {
                let version = content_version(&any);
                if state.resources.get(name.as_str()).is_some_and(|s| s.version == version) {
                    continue;
                }
                let name: Arc<str> = name.into();
                let resource = Resource {
                    version,
                    resource: Some(any),
                    name: name.to_string(),
                    aliases: Vec::new(),
                };
                let stored = Stored {
                    encoded: response::encode_resource(&resource),
                    version: resource.version,
                };
                state.resources.insert(Arc::clone(&name), stored);
                state.record(name, self.log_capacity);
                changed += 1;
            }
            for name in removals {
                if let Some((name, _)) = state.resources.remove_entry(name.as_str()) {
                    state.record(name, self.log_capacity);
                    changed += 1;
                }
            }
        }
        if changed > 0 {
            self.changed.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Makes `resources` the whole content of `type_url`: upserts them, removes every other name.
    pub fn replace_all(&self, type_url: &str, resources: BTreeMap<String, Any>) -> usize {
        let stale: Vec<String> = {
            let types = self.lock();
            types.get(type_url).map_or_else(Vec::new, |state| {
                state
                    .resources
                    .keys()
                    .filter(|name| !resources.contains_key(&***name))
                    .map(|name| name.to_string())
                    .collect()
            })
        };
        self.apply(type_url, resources, stale)
    }

    /// The version of `name`, if stored.
    pub fn version(&self, type_url: &str, name: &str) -> Option<String> {
        let types = self.lock();
        types.get(type_url)?.resources.get(name).map(|s| s.version.clone())
    }

    /// How many resources of `type_url` are stored.
    pub fn len(&self, type_url: &str) -> usize {
        self.lock().get(type_url).map_or(0, |s| s.resources.len())
    }

    /// Whether no resource of `type_url` is stored.
    pub fn is_empty(&self, type_url: &str) -> bool {
        self.len(type_url) == 0
    }

    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, TypeState>> {
        // A panic while holding the lock cannot leave a half-applied resource (each insert is
        // one map operation), so the data is still consistent.
        self.types.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TypeState {
    fn record(&mut self, name: Arc<str>, capacity: usize) {
        self.generation += 1;
        self.log.push_back((self.generation, name));
        while self.log.len() > capacity {
            if let Some((generation, _)) = self.log.pop_front() {
                self.floor = generation;
            }
        }
    }

    /// Changes after `cursor` among the names `wanted` accepts, or `None` when the log no
    /// longer reaches back to `cursor`.
    pub(crate) fn changes_since(&self, cursor: u64, wanted: impl Fn(&str) -> bool) -> Option<Changes<'_>> {
        if cursor < self.floor {
            return None;
        }
        let start = self.log.partition_point(|(generation, _)| *generation <= cursor);
        let mut seen = HashSet::new();
        let mut changes = Changes::default();
        for (_, name) in self.log.range(start..) {
            if !wanted(name) || !seen.insert(Arc::clone(name)) {
                continue;
            }
            match self.resources.get(name) {
                Some(stored) => changes.upserted.push(stored),
                None => changes.removed.push(Arc::clone(name)),
            }
        }
        Some(changes)
    }
}

/// A version that depends only on the content, so it survives server restarts and is the same
/// on every replica: a reconnecting client with `initial_resource_versions` gets exactly the
/// resources whose bytes differ. FNV-1a, 64 bit: stable, and collisions only cost a missed
/// update when two contents of one name collide.
fn content_version(any: &Any) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in any.type_url.as_bytes().iter().chain(&any.value) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

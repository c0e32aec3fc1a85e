//! What changed in the index's output since the last [`crate::Index::drain_changes`], so that
//! consumers (the xDS server, the status writer) push deltas instead of rebuilding.

use std::collections::BTreeSet;

use crate::object::ObjectKey;

/// The keys of one output kind that were created or changed, and those that went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanges<K: Ord = String> {
    pub upserted: BTreeSet<K>,
    pub removed: BTreeSet<K>,
}

impl<K: Ord> Default for KeyChanges<K> {
    fn default() -> Self {
        Self {
            upserted: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> KeyChanges<K> {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    pub(crate) fn upsert(&mut self, key: &K) {
        self.removed.remove(key);
        self.upserted.insert(key.clone());
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.upserted.remove(key);
        self.removed.insert(key.clone());
    }
}

/// Output changes by kind; keys are `namespace/name`. A key created and removed between two
/// drains is reported as removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub workloads: KeyChanges,
    pub services: KeyChanges,
    pub authorization_policies: KeyChanges,
    pub peer_authentications: KeyChanges,
    /// Valid policies bound to waypoints by `targetRefs`.
    pub waypoint_policies: KeyChanges,
    pub traffic_policies: KeyChanges,
    pub fault_injections: KeyChanges,
    pub http_routes: KeyChanges,
    pub grpc_routes: KeyChanges,
    /// Services whose set of endpoint workloads changed (the workloads themselves are listed
    /// under `workloads`): for consumers that keep per-service endpoint lists.
    pub endpoints: BTreeSet<String>,
    /// Ambit CRD objects whose desired status changed; removed objects need no status.
    pub statuses: BTreeSet<ObjectKey>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
            && self.services.is_empty()
            && self.authorization_policies.is_empty()
            && self.peer_authentications.is_empty()
            && self.waypoint_policies.is_empty()
            && self.traffic_policies.is_empty()
            && self.fault_injections.is_empty()
            && self.http_routes.is_empty()
            && self.grpc_routes.is_empty()
            && self.endpoints.is_empty()
            && self.statuses.is_empty()
    }
}

//! [`Index`]: the stored objects, the derived outputs and the bookkeeping that keeps one object
//! change proportional to what it touches. The derivation rules live in the sibling modules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ambit_crds::gateway_api::{Gateway, GrpcRoute, HttpRoute};
use ambit_crds::{AuthorizationPolicy, FaultInjection, PeerAuthentication, TrafficPolicy};
use ambit_model as model;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};

use crate::Config;
use crate::changes::{Changes, KeyChanges};
use crate::object::{Kind, Object, ObjectKey};
use crate::services::SliceEntry;
use crate::status::ObjectStatus;

/// `namespace/name`.
pub(crate) type Key = String;

pub(crate) fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}")
}

/// An object the index cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("{kind} without metadata.name cannot be indexed; check the object's source")]
    MissingName { kind: Kind },
}

/// The cluster index. See the crate docs.
#[derive(Debug, Default)]
pub struct Index {
    pub(crate) config: Config,

    pub(crate) namespaces: HashMap<String, Arc<Namespace>>,
    pub(crate) pods: HashMap<Key, Arc<Pod>>,
    pub(crate) pod_keys_by_uid: HashMap<String, Key>,
    pub(crate) pods_by_namespace: HashMap<String, BTreeSet<Key>>,
    pub(crate) pods_by_node: HashMap<String, BTreeSet<Key>>,
    pub(crate) kube_services: HashMap<Key, Arc<Service>>,
    pub(crate) services_by_namespace: HashMap<String, BTreeSet<Key>>,
    pub(crate) slices: HashMap<Key, SliceEntry>,
    pub(crate) slices_by_service: HashMap<Key, BTreeSet<Key>>,
    /// Pod → service → how many ready slice endpoints name the pod for that service.
    pub(crate) slice_services_by_pod: HashMap<Key, BTreeMap<Key, usize>>,
    pub(crate) gateways: HashMap<Key, Arc<Gateway>>,
    pub(crate) gateways_by_namespace: HashMap<String, BTreeSet<Key>>,
    pub(crate) authorization_policy_objects: HashMap<Key, Arc<AuthorizationPolicy>>,
    pub(crate) peer_authentication_objects: HashMap<Key, Arc<PeerAuthentication>>,
    pub(crate) traffic_policy_objects: HashMap<Key, Arc<TrafficPolicy>>,
    pub(crate) fault_injection_objects: HashMap<Key, Arc<FaultInjection>>,

    pub(crate) workloads: BTreeMap<Key, Arc<model::Workload>>,
    pub(crate) services: BTreeMap<Key, Arc<model::Service>>,
    pub(crate) authorization_policies: BTreeMap<Key, Arc<model::AuthorizationPolicy>>,
    pub(crate) peer_authentications: BTreeMap<Key, Arc<model::PeerAuthentication>>,
    pub(crate) waypoint_policies: BTreeMap<Key, Arc<AuthorizationPolicy>>,
    pub(crate) traffic_policies: BTreeMap<Key, Arc<TrafficPolicy>>,
    pub(crate) fault_injections: BTreeMap<Key, Arc<FaultInjection>>,
    pub(crate) http_routes: BTreeMap<Key, Arc<HttpRoute>>,
    pub(crate) grpc_routes: BTreeMap<Key, Arc<GrpcRoute>>,
    pub(crate) statuses: BTreeMap<ObjectKey, Arc<ObjectStatus>>,

    /// Service → the workloads that list it, as last computed.
    pub(crate) members: HashMap<Key, BTreeSet<Key>>,
    /// Workload → the services it lists, as last computed.
    pub(crate) memberships: HashMap<Key, BTreeSet<Key>>,
    /// Referenced object → the Ambit objects whose status depends on whether it exists.
    pub(crate) referrers: HashMap<ObjectKey, BTreeSet<ObjectKey>>,

    pub(crate) changes: Changes,
    dirty_pods: BTreeSet<Key>,
    dirty_services: BTreeSet<Key>,
    dirty_statuses: BTreeSet<ObjectKey>,
}

impl Index {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds `object`, or replaces the object of the same kind, namespace and name. A namespaced
    /// object without a namespace is taken to be in `default`, as kubectl does.
    pub fn apply(&mut self, object: impl Into<Object>) -> Result<(), ApplyError> {
        let object = object.into();
        let kind = object.kind();
        let metadata = object.metadata();
        let name = metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(ApplyError::MissingName { kind })?;
        let namespace = metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let object_key = key(&namespace, &name);
        match object {
            Object::Namespace(ns) => self.apply_namespace(name, ns),
            Object::Pod(pod) => self.apply_pod(&namespace, object_key, Some(pod)),
            Object::Service(service) => self.apply_service(&namespace, object_key, Some(service)),
            Object::EndpointSlice(slice) => self.apply_slice(&namespace, object_key, Some(&slice)),
            Object::Gateway(gateway) => self.apply_gateway(&namespace, object_key, Some(gateway)),
            Object::HttpRoute(route) => {
                self.referenced(Kind::HttpRoute, &namespace, &name);
                replace(
                    &mut self.http_routes,
                    &mut self.changes.http_routes,
                    object_key,
                    Some(route),
                );
            }
            Object::GrpcRoute(route) => {
                self.referenced(Kind::GrpcRoute, &namespace, &name);
                replace(
                    &mut self.grpc_routes,
                    &mut self.changes.grpc_routes,
                    object_key,
                    Some(route),
                );
            }
            Object::AuthorizationPolicy(policy) => self.apply_authorization_policy(object_key, Some(policy)),
            Object::PeerAuthentication(policy) => self.apply_peer_authentication(object_key, Some(policy)),
            Object::TrafficPolicy(policy) => self.apply_traffic_policy(object_key, Some(policy)),
            Object::FaultInjection(fault) => self.apply_fault_injection(object_key, Some(fault)),
        }
        self.flush();
        Ok(())
    }

    /// Removes an object; `namespace` is ignored for namespaces. Deleting an unknown object does
    /// nothing.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        let object_key = key(namespace, name);
        match kind {
            Kind::Namespace => self.delete_namespace(name),
            Kind::Pod => self.apply_pod(namespace, object_key, None),
            Kind::Service => self.apply_service(namespace, object_key, None),
            Kind::EndpointSlice => self.apply_slice(namespace, object_key, None),
            Kind::Gateway => self.apply_gateway(namespace, object_key, None),
            Kind::HttpRoute => {
                self.referenced(Kind::HttpRoute, namespace, name);
                replace(&mut self.http_routes, &mut self.changes.http_routes, object_key, None);
            }
            Kind::GrpcRoute => {
                self.referenced(Kind::GrpcRoute, namespace, name);
                replace(&mut self.grpc_routes, &mut self.changes.grpc_routes, object_key, None);
            }
            Kind::AuthorizationPolicy => self.apply_authorization_policy(object_key, None),
            Kind::PeerAuthentication => self.apply_peer_authentication(object_key, None),
            Kind::TrafficPolicy => self.apply_traffic_policy(object_key, None),
            Kind::FaultInjection => self.apply_fault_injection(object_key, None),
        }
        self.flush();
    }

    /// The output changes since the last call.
    pub fn drain_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    fn apply_namespace(&mut self, name: String, namespace: Arc<Namespace>) {
        let relevant = |ns: &Namespace| {
            let labels = ns.metadata.labels.as_ref();
            [crate::DATAPLANE_MODE_LABEL, crate::USE_WAYPOINT_LABEL].map(|l| labels.and_then(|m| m.get(l)).cloned())
        };
        let changed = self
            .namespaces
            .get(&name)
            .is_none_or(|old| relevant(old) != relevant(&namespace));
        self.namespaces.insert(name.clone(), namespace);
        if changed {
            self.dirty_namespace(&name);
        }
    }

    fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.dirty_namespace(name);
        }
    }

    /// Enrollment and waypoint binding of everything in the namespace may have changed.
    fn dirty_namespace(&mut self, namespace: &str) {
        if let Some(pods) = self.pods_by_namespace.get(namespace) {
            self.dirty_pods.extend(pods.iter().cloned());
        }
        if let Some(services) = self.services_by_namespace.get(namespace) {
            self.dirty_services.extend(services.iter().cloned());
        }
    }

    fn apply_pod(&mut self, namespace: &str, pod_key: Key, pod: Option<Arc<Pod>>) {
        let old = match &pod {
            Some(pod) => self.pods.insert(pod_key.clone(), Arc::clone(pod)),
            None => self.pods.remove(&pod_key),
        };
        if let Some(old) = &old {
            if let Some(uid) = &old.metadata.uid {
                self.pod_keys_by_uid.remove(uid);
            }
            if let Some(node) = old.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                remove_from(&mut self.pods_by_node, node, &pod_key);
            }
        }
        match &pod {
            Some(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.pod_keys_by_uid.insert(uid.clone(), pod_key.clone());
                }
                if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                    self.pods_by_node
                        .entry(node.clone())
                        .or_default()
                        .insert(pod_key.clone());
                }
                self.pods_by_namespace
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(pod_key.clone());
            }
            None => remove_from(&mut self.pods_by_namespace, namespace, &pod_key),
        }
        self.dirty_pods.insert(pod_key);
    }

    fn apply_service(&mut self, namespace: &str, service_key: Key, service: Option<Arc<Service>>) {
        let name = service_key.split_once('/').map_or("", |(_, name)| name).to_owned();
        match service {
            Some(service) => {
                self.kube_services.insert(service_key.clone(), service);
                self.services_by_namespace
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(service_key.clone());
            }
            None => {
                self.kube_services.remove(&service_key);
                remove_from(&mut self.services_by_namespace, namespace, &service_key);
            }
        }
        self.dirty_services.insert(service_key.clone());
        self.dirty_members_of(&service_key);
        self.referenced(Kind::Service, namespace, &name);
    }

    fn apply_slice(
        &mut self,
        namespace: &str,
        slice_key: Key,
        slice: Option<&k8s_openapi::api::discovery::v1::EndpointSlice>,
    ) {
        let new = slice.and_then(|s| SliceEntry::from_slice(namespace, s));
        let old = self.slices.remove(&slice_key);
        for entry in [&old, &new].into_iter().flatten() {
            self.dirty_pods.extend(entry.pods.iter().cloned());
        }
        if let Some(old) = old {
            remove_from(&mut self.slices_by_service, &old.service, &slice_key);
            for pod in &old.pods {
                let counts = self.slice_services_by_pod.entry(pod.clone()).or_default();
                if let Some(count) = counts.get_mut(&old.service) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&old.service);
                    }
                }
                if counts.is_empty() {
                    self.slice_services_by_pod.remove(pod);
                }
            }
            self.dirty_members_of(&old.service);
        }
        if let Some(new) = new {
            self.slices_by_service
                .entry(new.service.clone())
                .or_default()
                .insert(slice_key.clone());
            for pod in &new.pods {
                *self
                    .slice_services_by_pod
                    .entry(pod.clone())
                    .or_default()
                    .entry(new.service.clone())
                    .or_default() += 1;
            }
            self.dirty_members_of(&new.service);
            self.slices.insert(slice_key, new);
        }
    }

    /// Marks the pods that list `service` now, and those that should after a change.
    fn dirty_members_of(&mut self, service: &Key) {
        if let Some(members) = self.members.get(service) {
            self.dirty_pods.extend(members.iter().cloned());
        }
        let candidates = self.endpoint_candidates(service);
        self.dirty_pods.extend(candidates);
    }

    fn apply_gateway(&mut self, namespace: &str, gateway_key: Key, gateway: Option<Arc<Gateway>>) {
        let name = gateway_key.split_once('/').map_or("", |(_, name)| name).to_owned();
        let is_waypoint = |g: &Gateway| g.spec.gateway_class_name == ambit_crds::gateway_api::WAYPOINT_GATEWAY_CLASS;
        let old = match &gateway {
            Some(gateway) => {
                self.gateways_by_namespace
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(gateway_key.clone());
                self.gateways.insert(gateway_key, Arc::clone(gateway))
            }
            None => {
                remove_from(&mut self.gateways_by_namespace, namespace, &gateway_key);
                self.gateways.remove(&gateway_key)
            }
        };
        let affects_binding = |g: &Option<Arc<Gateway>>| g.as_deref().is_some_and(is_waypoint);
        if affects_binding(&old) || affects_binding(&gateway) {
            let changed = match (&old, &gateway) {
                (Some(old), Some(new)) => {
                    old.spec.gateway_class_name != new.spec.gateway_class_name
                        || old.metadata.annotations != new.metadata.annotations
                }
                _ => true,
            };
            if changed {
                self.dirty_namespace(namespace);
            }
        }
        self.referenced(Kind::Gateway, namespace, &name);
    }

    /// Statuses that depend on whether `kind namespace/name` exists need a second look.
    pub(crate) fn referenced(&mut self, kind: Kind, namespace: &str, name: &str) {
        if let Some(referrers) = self.referrers.get(&ObjectKey::new(kind, namespace, name)) {
            self.dirty_statuses.extend(referrers.iter().cloned());
        }
    }

    pub(crate) fn dirty_status(&mut self, object: ObjectKey) {
        self.dirty_statuses.insert(object);
    }

    /// Recomputes what the last change marked, recording real differences only.
    fn flush(&mut self) {
        for service_key in std::mem::take(&mut self.dirty_services) {
            let service = self.model_service(&service_key).map(Arc::new);
            replace_if_changed(&mut self.services, &mut self.changes.services, service_key, service);
        }
        for pod_key in std::mem::take(&mut self.dirty_pods) {
            let (workload, memberships) = match self.workload(&pod_key) {
                Some((workload, memberships)) => (Some(Arc::new(workload)), memberships),
                None => (None, BTreeSet::new()),
            };
            self.update_memberships(&pod_key, memberships);
            replace_if_changed(&mut self.workloads, &mut self.changes.workloads, pod_key, workload);
        }
        for object in std::mem::take(&mut self.dirty_statuses) {
            let status = self.status(&object).map(Arc::new);
            let unchanged = self.statuses.get(&object).map(|s| &**s) == status.as_deref();
            if !unchanged {
                match status {
                    Some(status) => {
                        self.statuses.insert(object.clone(), status);
                        self.changes.statuses.insert(object);
                    }
                    None => {
                        self.statuses.remove(&object);
                        self.changes.statuses.remove(&object);
                    }
                }
            }
        }
    }

    fn update_memberships(&mut self, pod_key: &Key, new: BTreeSet<Key>) {
        let old = self.memberships.remove(pod_key).unwrap_or_default();
        for service in old.symmetric_difference(&new) {
            self.changes.endpoints.insert(service.clone());
        }
        for service in old.difference(&new) {
            remove_from(&mut self.members, service, pod_key);
        }
        for service in new.difference(&old) {
            self.members.entry(service.clone()).or_default().insert(pod_key.clone());
        }
        if !new.is_empty() {
            self.memberships.insert(pod_key.clone(), new);
        }
    }

    // Outputs.

    /// Workloads by `namespace/name`.
    pub fn workloads(&self) -> &BTreeMap<String, Arc<model::Workload>> {
        &self.workloads
    }

    /// Services by `namespace/name`.
    pub fn services(&self) -> &BTreeMap<String, Arc<model::Service>> {
        &self.services
    }

    /// The L4 authorization policies ztunnel enforces, by `namespace/name`.
    pub fn authorization_policies(&self) -> &BTreeMap<String, Arc<model::AuthorizationPolicy>> {
        &self.authorization_policies
    }

    pub fn peer_authentications(&self) -> &BTreeMap<String, Arc<model::PeerAuthentication>> {
        &self.peer_authentications
    }

    /// Valid authorization policies bound to waypoints by `targetRefs`, for the waypoint.
    pub fn waypoint_policies(&self) -> &BTreeMap<String, Arc<AuthorizationPolicy>> {
        &self.waypoint_policies
    }

    /// Valid traffic policies, whether or not their Service exists yet.
    pub fn traffic_policies(&self) -> &BTreeMap<String, Arc<TrafficPolicy>> {
        &self.traffic_policies
    }

    /// Valid fault injections, whether or not their target exists yet.
    pub fn fault_injections(&self) -> &BTreeMap<String, Arc<FaultInjection>> {
        &self.fault_injections
    }

    pub fn http_routes(&self) -> &BTreeMap<String, Arc<HttpRoute>> {
        &self.http_routes
    }

    pub fn grpc_routes(&self) -> &BTreeMap<String, Arc<GrpcRoute>> {
        &self.grpc_routes
    }

    /// The desired status of every Ambit CRD object.
    pub fn statuses(&self) -> &BTreeMap<ObjectKey, Arc<ObjectStatus>> {
        &self.statuses
    }

    /// The workloads listing service `namespace/name` as theirs.
    pub fn endpoints(&self, service: &str) -> impl Iterator<Item = &Arc<model::Workload>> {
        self.members
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|pod| self.workloads.get(pod))
    }

    // Lookups for the CA and the operator.

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.pods.get(&key(namespace, name))
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.pod_keys_by_uid.get(uid).and_then(|key| self.pods.get(key))
    }

    /// The `(namespace, service account)` identities of the pods scheduled on `node` that a node's
    /// ztunnel may request certificates for: every running or pending pod there, meshed or not
    /// (ztunnel asks as soon as the CNI plugin hands it the pod, before the API shows its IP),
    /// but not host-network pods, which never get a workload identity.
    pub fn identities_on_node(&self, node: &str) -> BTreeSet<(String, String)> {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|pod_key| self.pods.get(pod_key))
            .filter(|pod| crate::workloads::may_hold_identity(pod))
            .map(|pod| {
                (
                    pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
                    crate::workloads::service_account(pod).to_owned(),
                )
            })
            .collect()
    }

    /// Whether the ztunnel of `node` may obtain a certificate for `namespace`/`service_account`.
    pub fn may_node_request(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|pod_key| self.pods.get(pod_key))
            .any(|pod| {
                crate::workloads::may_hold_identity(pod)
                    && pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && crate::workloads::service_account(pod) == service_account
            })
    }
}

/// Stores or removes an output without comparing (routes are kept as applied).
pub(crate) fn replace<V>(map: &mut BTreeMap<Key, Arc<V>>, changes: &mut KeyChanges, key: Key, value: Option<Arc<V>>) {
    match value {
        Some(value) => {
            changes.upsert(&key);
            map.insert(key, value);
        }
        None => {
            if map.remove(&key).is_some() {
                changes.remove(&key);
            }
        }
    }
}

/// Stores or removes an output, recording a change only when it differs from the stored one,
/// so that unchanged outputs keep their `Arc` and their consumers do nothing.
pub(crate) fn replace_if_changed<V: PartialEq>(
    map: &mut BTreeMap<Key, Arc<V>>,
    changes: &mut KeyChanges,
    key: Key,
    value: Option<Arc<V>>,
) {
    match value {
        Some(value) => {
            if map.get(&key).is_none_or(|old| **old != *value) {
                changes.upsert(&key);
                map.insert(key, value);
            }
        }
        None => {
            if map.remove(&key).is_some() {
                changes.remove(&key);
            }
        }
    }
}

fn remove_from(map: &mut HashMap<String, BTreeSet<Key>>, outer: &str, inner: &Key) {
    if let Some(set) = map.get_mut(outer) {
        set.remove(inner);
        if set.is_empty() {
            map.remove(outer);
        }
    }
}

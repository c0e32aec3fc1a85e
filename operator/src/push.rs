//! From index changes to xDS resources: the workload `Address`es and `Authorization`s the store
//! holds, updated incrementally. A pod change reconverts that one workload; a service change its
//! members too; a policy or peer-authentication change reconverts everything (as istiod does a
//! full push), because which policies a workload names can change for all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ambit_index::{Changes, Index};
use ambit_model::{MtlsMode, State, Workload};
use ambit_proto::istio::workload::address;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ambit_xds::convert::{self, ConvertOptions, peer_authentication};
use ambit_xds::server::ResourceStore;

/// What has been projected into the store, to turn index changes into resource names.
pub struct Projection {
    options: ConvertOptions,
    /// Services, policies and peer authentications, without workloads: what converting one
    /// workload consults. Rebuilt when any of them changes.
    context: State,
    /// Index key (`namespace/name`) → xDS name (`namespace/hostname`) of each projected service.
    service_names: HashMap<String, String>,
    synced: bool,
}

/// What one projection pass did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Resources whose content changed or that were removed.
    pub changed: usize,
    pub full: bool,
}

impl Projection {
    pub fn new(options: ConvertOptions) -> Self {
        Projection {
            context: State::default(),
            options,
            service_names: HashMap::new(),
            synced: false,
        }
    }

    /// Brings `store` in line with `index`, given what changed since the last call.
    pub fn apply(&mut self, index: &Index, changes: &Changes, store: &ResourceStore) -> Pushed {
        let policies_changed = !changes.authorization_policies.is_empty() || !changes.peer_authentications.is_empty();
        if !self.synced || policies_changed {
            self.synced = true;
            return Pushed {
                changed: self.full(index, store),
                full: true,
            };
        }
        let mut changed = 0;
        let mut workloads: BTreeSet<String> = changes.workloads.upserted.clone();
        if !changes.services.is_empty() {
            self.context = self.context(index, false);
            let mut upserts = Vec::new();
            for key in &changes.services.upserted {
                if let Some(service) = index.services().get(key) {
                    let name = service.endpoint_key();
                    upserts.push((
                        name.clone(),
                        convert::address_any(address::Type::Service(convert::service_to_proto(service))),
                    ));
                    self.service_names.insert(key.clone(), name.clone());
                    // Members that rely on the service's own target ports carry its ports.
                    workloads.extend(index.endpoints(&name).map(|w| w.key()));
                }
            }
            let removals: Vec<String> = changes
                .services
                .removed
                .iter()
                .filter_map(|key| self.service_names.remove(key))
                .collect();
            changed += store.apply(ADDRESS_TYPE_URL, upserts, removals);
        }
        let mut addresses = Vec::new();
        let mut authorizations = Vec::new();
        for key in &workloads {
            if let Some(workload) = index.workloads().get(key) {
                let (any, converted) = self.workload(workload);
                addresses.push(any);
                authorizations.extend(converted);
            }
        }
        let removals = changes.workloads.removed.iter().filter_map(|key| {
            let (namespace, name) = key.split_once('/')?;
            Some(convert::workload_uid(&self.options.cluster_id, namespace, name))
        });
        changed += store.apply(ADDRESS_TYPE_URL, addresses, removals);
        changed += store.apply(AUTHORIZATION_TYPE_URL, authorizations, Vec::new());
        Pushed { changed, full: false }
    }

    /// One workload's Address, and the converted peer-authentication policy it names, if any.
    fn workload(&self, workload: &Workload) -> ((String, prost_types::Any), Option<(String, prost_types::Any)>) {
        let mtls = peer_authentication::for_workload(&self.context, workload);
        let proto = convert::workload_to_proto(&self.context, workload, &mtls.policy_names, &self.options);
        let converted = mtls
            .converted
            .map(|(name, policy)| (name, convert::authorization_any(&policy)));
        (
            (proto.uid.clone(), convert::address_any(address::Type::Workload(proto))),
            converted,
        )
    }

    /// Replaces the store's content with a conversion of the whole index.
    fn full(&mut self, index: &Index, store: &ResourceStore) -> usize {
        let state = self.context(index, true);
        let resources = convert::to_resources(&state, &self.options);
        for policy in &resources.skipped {
            tracing::debug!(policy, "AUDIT policy has no wire form for ztunnel; not sent");
        }
        self.service_names = index
            .services()
            .iter()
            .map(|(key, service)| (key.clone(), service.endpoint_key()))
            .collect();
        self.context = self.context(index, false);
        let mut authorizations: BTreeMap<String, prost_types::Any> = resources.authorizations;
        if self.context.peer_authentications().next().is_some() {
            // Kept whenever STRICT may be in use, so that a workload added later in a STRICT
            // namespace finds the policy it names without a full push.
            let strict = peer_authentication::static_strict();
            authorizations
                .entry(peer_authentication::static_strict_key())
                .or_insert_with(|| convert::authorization_any(&strict));
        }
        store.replace_all(ADDRESS_TYPE_URL, resources.addresses)
            + store.replace_all(AUTHORIZATION_TYPE_URL, authorizations)
    }

    /// The index as a model state, with or without its workloads.
    fn context(&self, index: &Index, with_workloads: bool) -> State {
        let workloads: Vec<Arc<Workload>> = if with_workloads {
            index.workloads().values().cloned().collect()
        } else {
            Vec::new()
        };
        State::from_parts(
            index.config().trust_domain.clone(),
            MtlsMode::Permissive,
            workloads,
            index.services().values().cloned().collect(),
            index.authorization_policies().values().cloned().collect(),
            index.peer_authentications().values().cloned().collect(),
        )
    }
}

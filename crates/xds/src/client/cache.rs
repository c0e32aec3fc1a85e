//! What the client holds: the converted resources by name with their versions, and the
//! [`State`] built from them. A response is applied whole or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ambit_model::authorization::PolicyScope;
use ambit_model::{AuthorizationPolicy, MtlsMode, Service, State, Workload};
use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use crate::convert::{self, ConvertError, ConvertOptions, ReceivedAddress};

#[derive(Debug, Clone)]
enum CachedAddress {
    Workload(Arc<Workload>, Vec<String>),
    Service(Arc<Service>),
}

/// Namespace → names of the workloads that list one selector policy.
type Members = BTreeMap<String, BTreeSet<String>>;

/// Resources by name, with versions, for both types. Selector-policy memberships and the
/// policies filled with them are kept up to date incrementally, so a push that changes one
/// workload costs O(changed) here plus the O(workloads) pointer copy of [`Cache::state`].
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Ordered by uid, which orders workloads nearly by `namespace/name`, so the sort in
    /// `State::from_parts` runs over presorted input (random order costs ~10 ms at 10k).
    addresses: BTreeMap<String, (String, CachedAddress)>,
    authorizations: HashMap<String, (String, Arc<AuthorizationPolicy>)>,
    members: HashMap<String, Members>,
    /// Selector policies with their members filled in; dropped when either changes.
    filled: HashMap<String, Arc<AuthorizationPolicy>>,
}

/// Why a response was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("response for unsubscribed type URL {0}")]
    UnknownType(String),
}

impl Cache {
    /// Name → version of what is held of `type_url`, for `initial_resource_versions`.
    pub(crate) fn versions(&self, type_url: &str) -> HashMap<String, String> {
        match type_url {
            ADDRESS_TYPE_URL => self
                .addresses
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
            _ => self
                .authorizations
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
        }
    }

    /// Converts every resource of `response` first, then applies all of them; on the first bad
    /// resource nothing is applied and the error says which one.
    pub(crate) fn apply(
        &mut self,
        response: &DeltaDiscoveryResponse,
        options: &ConvertOptions,
    ) -> Result<(), ApplyError> {
        match response.type_url.as_str() {
            ADDRESS_TYPE_URL => {
                let mut converted = Vec::with_capacity(response.resources.len());
                for resource in &response.resources {
                    let any = resource.resource.as_ref().ok_or_else(|| missing_body(&resource.name))?;
                    let item = match convert::address_from_any(&resource.name, any, options)? {
                        ReceivedAddress::Workload {
                            workload,
                            authorization_policies,
                        } => CachedAddress::Workload(Arc::new(workload), authorization_policies),
                        ReceivedAddress::Service(service) => CachedAddress::Service(Arc::new(service)),
                    };
                    converted.push((resource.name.clone(), (resource.version.clone(), item)));
                }
                for name in &response.removed_resources {
                    if let Some((_, old)) = self.addresses.remove(name) {
                        self.forget_members(&old);
                    }
                }
                for (name, (version, item)) in converted {
                    let old = self.addresses.remove(&name);
                    // Most updates (an IP, a port) leave memberships alone; only real changes
                    // refill the selector policies.
                    if !old.as_ref().is_some_and(|(_, old)| same_members(old, &item)) {
                        if let Some((_, old)) = &old {
                            self.forget_members(old);
                        }
                        self.add_members(&item);
                    }
                    self.addresses.insert(name, (version, item));
                }
            }
            AUTHORIZATION_TYPE_URL => {
                let mut converted = Vec::with_capacity(response.resources.len());
                for resource in &response.resources {
                    let any = resource.resource.as_ref().ok_or_else(|| missing_body(&resource.name))?;
                    let policy = convert::authorization_from_any(&resource.name, any)?;
                    converted.push((resource.name.clone(), (resource.version.clone(), Arc::new(policy))));
                }
                for name in &response.removed_resources {
                    self.authorizations.remove(name);
                    self.filled.remove(name);
                }
                for (name, entry) in converted {
                    self.filled.remove(&name);
                    self.authorizations.insert(name, entry);
                }
            }
            other => return Err(ApplyError::UnknownType(other.to_owned())),
        }
        Ok(())
    }

    /// The complete state. Selector policies get the workloads that name them.
    pub(crate) fn state(&mut self, trust_domain: &str) -> State {
        let mut workloads = Vec::with_capacity(self.addresses.len());
        let mut services = Vec::new();
        for (_, item) in self.addresses.values() {
            match item {
                CachedAddress::Workload(workload, _) => workloads.push(Arc::clone(workload)),
                CachedAddress::Service(service) => services.push(Arc::clone(service)),
            }
        }
        let mut policies = Vec::with_capacity(self.authorizations.len());
        for (name, (_, policy)) in &self.authorizations {
            let policy = match policy.scope {
                PolicyScope::Workloads(_) => Arc::clone(self.filled.entry(name.clone()).or_insert_with(|| {
                    let mut filled = AuthorizationPolicy::clone(policy);
                    filled.scope = PolicyScope::Workloads(self.members.get(name).cloned().unwrap_or_default());
                    Arc::new(filled)
                })),
                _ => Arc::clone(policy),
            };
            policies.push(policy);
        }
        // PeerAuthentication arrives as DENY authorizations, so the default stays PERMISSIVE.
        State::from_parts(
            trust_domain.to_owned(),
            MtlsMode::Permissive,
            workloads,
            services,
            policies,
            Vec::new(),
        )
    }

    fn add_members(&mut self, item: &CachedAddress) {
        if let CachedAddress::Workload(workload, policies) = item {
            for policy in policies {
                self.filled.remove(policy);
                self.members
                    .entry(policy.clone())
                    .or_default()
                    .entry(workload.namespace.clone())
                    .or_default()
                    .insert(workload.name.clone());
            }
        }
    }

    fn forget_members(&mut self, item: &CachedAddress) {
        if let CachedAddress::Workload(workload, policies) = item {
            for policy in policies {
                self.filled.remove(policy);
                if let Some(names) = self
                    .members
                    .get_mut(policy)
                    .and_then(|m| m.get_mut(&workload.namespace))
                {
                    names.remove(&workload.name);
                }
            }
        }
    }
}

fn same_members(old: &CachedAddress, new: &CachedAddress) -> bool {
    match (old, new) {
        (CachedAddress::Workload(a, a_policies), CachedAddress::Workload(b, b_policies)) => {
            a.namespace == b.namespace && a.name == b.name && a_policies == b_policies
        }
        (CachedAddress::Service(_), CachedAddress::Service(_)) => true,
        _ => false,
    }
}

fn missing_body(name: &str) -> ConvertError {
    ConvertError::invalid(name, "resource", "none", "a resource needs a body")
}

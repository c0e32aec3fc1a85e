//! The indexed state ztunnel consults on every connection: workloads by IP, services by VIP,
//! and the policies that apply to a destination.
//!
//! Built once from a [`LocalConfig`] (later from xDS) and then only read; lookups are hash-map
//! hits or short scans. It does not watch files or talk to a control plane.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::authorization::{self, AuthorizationPolicy, AuthzDecision, ConnectionInfo};
use crate::config::LocalConfig;
use crate::peer_authentication::{MtlsMode, PeerAuthentication};
use crate::service::Service;
use crate::workload::Workload;

/// Everything the data plane knows about the mesh. Serializes (without its indexes) for
/// `/config_dump`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    trust_domain: String,
    default_mtls_mode: MtlsMode,
    /// Sorted by `namespace/name`, so every listing below is deterministic.
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    peer_authentications: Vec<Arc<PeerAuthentication>>,
    #[serde(skip)]
    workload_by_ip: HashMap<IpAddr, Arc<Workload>>,
    #[serde(skip)]
    service_by_vip: HashMap<IpAddr, Arc<Service>>,
}

impl State {
    /// Indexes a config. [`crate::config::parse`] rejects duplicate names and addresses; for a
    /// config built by hand that has some, the first in `namespace/name` order wins the address.
    pub fn from_config(config: LocalConfig) -> Self {
        Self::from_parts(
            config.trust_domain,
            config.mesh_defaults.peer_authentication,
            shared(config.workloads),
            shared(config.services),
            shared(config.authorization_policies),
            shared(config.peer_authentications),
        )
    }

    /// Indexes parts received from a control plane, like [`State::from_config`] does a file.
    /// Takes shared items so a client that rebuilds the state on every update clones pointers,
    /// not workloads. For duplicate addresses the first in `namespace/name` order wins.
    pub fn from_parts(
        trust_domain: String,
        default_mtls_mode: MtlsMode,
        mut workloads: Vec<Arc<Workload>>,
        mut services: Vec<Arc<Service>>,
        mut authorization_policies: Vec<Arc<AuthorizationPolicy>>,
        mut peer_authentications: Vec<Arc<PeerAuthentication>>,
    ) -> Self {
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        authorization_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        peer_authentications.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut workload_by_ip = HashMap::with_capacity(workloads.len());
        for workload in &workloads {
            for ip in &workload.addresses {
                workload_by_ip
                    .entry(ip.to_canonical())
                    .or_insert_with(|| Arc::clone(workload));
            }
        }
        let mut service_by_vip = HashMap::new();
        for service in &services {
            for vip in &service.vips {
                service_by_vip
                    .entry(vip.to_canonical())
                    .or_insert_with(|| Arc::clone(service));
            }
        }
        Self {
            trust_domain,
            default_mtls_mode,
            workloads,
            services,
            authorization_policies,
            peer_authentications,
            workload_by_ip,
            service_by_vip,
        }
    }

    /// The mTLS mode of workloads no peer authentication policy covers.
    pub fn default_mtls_mode(&self) -> MtlsMode {
        self.default_mtls_mode
    }

    /// The mesh's trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The workload owning `ip` (IPv4-mapped IPv6 addresses are looked up as IPv4).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(&ip.to_canonical())
    }

    /// The workload `namespace/name`.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads
            .binary_search_by(|w| (w.namespace.as_str(), w.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .and_then(|index| self.workloads.get(index))
    }

    /// All workloads, in `namespace/name` order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    /// The workloads running on `node`, in `namespace/name` order.
    pub fn workloads_on_node<'s>(&'s self, node: &'s str) -> impl Iterator<Item = &'s Arc<Workload>> {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// The service with a VIP of `addr`'s IP and a port of `addr`'s port, with the target port.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<(&Arc<Service>, u16)> {
        let service = self.service_by_vip.get(&addr.ip().to_canonical())?;
        let target_port = service.target_port(addr.port())?;
        Some((service, target_port))
    }

    /// The service whose hostname is `hostname`.
    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.hostname == hostname)
    }

    /// All services, in `namespace/name` order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    /// The service's endpoints in `namespace/name` order: the workloads that list it in their
    /// `services`, and the workloads of its namespace whose labels contain its (non-empty) selector.
    pub fn endpoints(&self, service: &Service) -> Vec<&Arc<Workload>> {
        let key = service.endpoint_key();
        self.workloads
            .iter()
            .filter(|w| {
                w.services.contains_key(&key)
                    || (!service.selector.is_empty()
                        && w.namespace == service.namespace
                        && w.matches_selector(&service.selector))
            })
            .collect()
    }

    /// All authorization policies, in `namespace/name` order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<AuthorizationPolicy>> {
        self.authorization_policies.iter()
    }

    /// The authorization policies that govern connections to `workload`.
    pub fn policies_for<'s>(&'s self, workload: &'s Workload) -> impl Iterator<Item = &'s Arc<AuthorizationPolicy>> {
        self.authorization_policies
            .iter()
            .filter(move |p| p.applies_to(workload))
    }

    /// All peer authentication policies, in `namespace/name` order.
    pub fn peer_authentications(&self) -> impl Iterator<Item = &Arc<PeerAuthentication>> {
        self.peer_authentications.iter()
    }

    /// L4 authorization of `conn` at the destination `dst`, with Istio's precedence: matching
    /// AUDIT policies are recorded without changing the decision; a matching DENY refuses; with
    /// no ALLOW policy applying the connection is allowed; otherwise some ALLOW must match.
    /// Among several matching policies the first in `namespace/name` order is reported.
    pub fn authorize(&self, dst: &Workload, conn: &ConnectionInfo<'_>) -> AuthzDecision {
        authorization::evaluate(self.policies_for(dst).map(|p| &**p), conn)
    }

    /// Whether `dst` requires mTLS on `port`. The most specific policy that sets a mode wins:
    /// workload selector, then namespace, then mesh-wide, then `meshDefaults`; within a policy a
    /// `portLevelMtls` entry beats its `mode`, and `UNSET` falls through to the next level.
    /// Among several policies at one level, the first in `namespace/name` order counts.
    /// ztunnel treats [`MtlsMode::Disable`] like [`MtlsMode::Permissive`].
    pub fn mtls_mode(&self, dst: &Workload, port: u16) -> MtlsMode {
        let workload_level = self.peer_authentications.iter().find(|p| p.selects(dst));
        let namespace_level = self
            .peer_authentications
            .iter()
            .find(|p| p.selector.is_none() && p.namespace == dst.namespace);
        let mesh_level = self.peer_authentications.iter().find(|p| p.is_mesh_wide());
        [workload_level, namespace_level, mesh_level]
            .into_iter()
            .flatten()
            .find_map(|p| p.mode_for_port(port))
            .unwrap_or(self.default_mtls_mode)
    }
}

fn shared<T>(items: Vec<T>) -> Vec<Arc<T>> {
    items.into_iter().map(Arc::new).collect()
}

impl From<LocalConfig> for State {
    fn from(config: LocalConfig) -> Self {
        Self::from_config(config)
    }
}

#[cfg(test)]
mod tests;

//! Workloads: the pods (or VMs) the data plane carries traffic for, and their identity.
//!
//! Mirrors `istio.workload.Workload`; this module owns the type and its identity strings, not how
//! workloads are found (see [`crate::State`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::service::ServicePort;

/// Kubernetes-style labels, and label selectors (a selector matches labels that contain it).
pub type Labels = BTreeMap<String, String>;

/// One workload: a pod with its addresses, identity and the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Pod name, unique within its namespace.
    pub name: String,
    pub namespace: String,
    /// The identity's service account; `default` unless set.
    pub service_account: String,
    /// Name of the node the workload runs on; the ztunnel of that node serves it.
    pub node: String,
    /// Pod IPs; at least one, none shared with another workload.
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    /// How peers reach this workload.
    pub protocol: Protocol,
    /// The owning "deployment" name, used as a metric label.
    pub workload_name: String,
    /// Path of the pod's network namespace on this node, when known from local config.
    pub netns: Option<PathBuf>,
    /// Trust domain of the workload's SPIFFE identity, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The services this workload is an endpoint of, keyed `<namespace>/<hostname>` (Istio's
    /// `Workload.services`), each with this workload's port mapping; an empty list means the
    /// service's own target ports. Filled by the control plane from EndpointSlices; the local
    /// config uses service selectors instead (see [`crate::State::endpoints`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Vec<ServicePort>>,
    /// The waypoint that handles traffic addressed to this workload, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<Waypoint>,
}

/// Where a waypoint is reached (Istio's `GatewayAddress`): the waypoint's service, by hostname or
/// by IP, and its HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waypoint {
    pub address: WaypointAddress,
    /// The waypoint's HBONE port, 15008.
    pub hbone_port: u16,
}

/// The address part of a [`Waypoint`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum WaypointAddress {
    /// The waypoint service `namespace/hostname`.
    Hostname { namespace: String, hostname: String },
    /// A VIP of the waypoint service.
    Ip(IpAddr),
}

impl Workload {
    /// The identity as Istio writes principals: `<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The identity as a SPIFFE ID, the URI SAN of the workload's certificate.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}", self.principal())
    }

    /// `<namespace>/<name>`, unique across the mesh.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The workload port that `service`'s port `port` reaches on this workload: this workload's own
    /// mapping when it has one, else the service's target port.
    pub fn target_port(&self, service: &crate::Service, port: u16) -> Option<u16> {
        let own = self
            .services
            .get(&service.endpoint_key())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .map(|p| p.target_port);
        own.or_else(|| service.target_port(port))
    }

    /// Whether every label of `selector` is present on this workload with the same value.
    /// An empty selector matches every workload.
    pub fn matches_selector(&self, selector: &Labels) -> bool {
        selector.iter().all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

/// How a workload is reached by its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Protocol {
    /// Meshed: reached through its node's ztunnel over HBONE (mTLS + HTTP/2 CONNECT) on 15008.
    #[default]
    #[serde(rename = "HBONE")]
    Hbone,
    /// Not meshed: plain TCP passthrough to the workload's own port.
    #[serde(rename = "TCP")]
    Tcp,
}

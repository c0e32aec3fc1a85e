//! Services: virtual IPs and ports in front of a set of workloads chosen by label selector.
//!
//! Mirrors `istio.workload.Service`; endpoint selection itself lives in [`crate::State`].

use std::net::IpAddr;

use serde::Serialize;

use crate::workload::Labels;

/// A Kubernetes-style service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Fully qualified name, e.g. `echo.default.svc.cluster.local`.
    pub hostname: String,
    /// Cluster IPs; empty for a headless service.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoints are the workloads of the service's namespace whose labels contain this selector,
    /// plus the workloads that list the service in [`crate::Workload::services`]. As in
    /// Kubernetes, an empty selector selects nothing by labels.
    pub selector: Labels,
    /// The waypoint that handles traffic addressed to this service, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<crate::Waypoint>,
}

impl Service {
    /// `<namespace>/<name>`, unique across the mesh.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `<namespace>/<hostname>`: how workloads name the services they belong to, and the xDS
    /// resource name of the service.
    pub fn endpoint_key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The workload port that service port `port` forwards to, if `port` is one of the service's.
    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.port == port).map(|p| p.target_port)
    }
}

/// One port of a service and the workload port it forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

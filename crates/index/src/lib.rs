//! The cluster index: Kubernetes objects and Ambit CRDs in, the mesh model out, incrementally.
//!
//! [`Index::apply`] and [`Index::delete`] take one object at a time; the index keeps the derived
//! workloads, services and policies (as shared `Arc`s) and records which of them changed, for
//! [`Index::drain_changes`]. It owns the translation rules (enrollment, endpoints, waypoint
//! binding, L4 policy translation, CRD status); it does not watch a cluster, serve xDS or do I/O.

mod changes;
mod index;
mod object;
mod policies;
mod services;
mod status;
mod workloads;

pub use changes::{Changes, KeyChanges};
pub use index::{ApplyError, Index};
pub use object::{Kind, Object, ObjectKey};
pub use status::ObjectStatus;

/// Namespace label that enrolls its pods: `ambit.dev/dataplane-mode=ambient`; on a pod, `none`
/// opts that pod out.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
/// [`DATAPLANE_MODE_LABEL`] value that enrolls a namespace.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE_LABEL`] and [`USE_WAYPOINT_LABEL`] value that opts out.
pub const OPT_OUT: &str = "none";
/// Namespace, Service or Pod label naming the waypoint (a Gateway of the same namespace).
pub const USE_WAYPOINT_LABEL: &str = "ambit.dev/use-waypoint";
/// Gateway annotation binding the waypoint to the workloads of one service account.
pub const FOR_SERVICE_ACCOUNT_ANNOTATION: &str = "ambit.dev/for-service-account";
/// Label the Gateway API puts on the pods of a Gateway's deployment: a waypoint's own pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The HBONE port waypoints listen on.
pub const WAYPOINT_HBONE_PORT: u16 = 15008;

/// What the index needs to know about the cluster that objects do not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// DNS suffix of service hostnames: `<name>.<namespace>.svc.<suffix>`.
    pub cluster_domain: String,
    /// Name of this cluster, for multi-cluster identifiers.
    pub cluster_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;

//! The data model the Ambit data plane runs on: workloads, services, L4 authorization policies
//! and peer authentication, shaped after Istio's workload API so an xDS client can fill the same
//! types; the local YAML config file ztunnel reads without a control plane; and [`State`], the
//! index ztunnel consults per connection, including the L4 authorization decision.
//!
//! Pure data and logic: no I/O, no async runtime, no Kubernetes or gRPC clients.

pub mod authorization;
pub mod config;
pub mod peer_authentication;
pub mod service;
pub mod state;
pub mod workload;

pub use authorization::{
    Action, AuthorizationPolicy, AuthzDecision, ConnectionInfo, PolicyScope, ROOT_NAMESPACE, StringMatch,
};
pub use config::{ConfigError, LocalConfig};
pub use peer_authentication::{MtlsMode, PeerAuthentication};
pub use service::{Service, ServicePort};
pub use state::State;
pub use workload::{Labels, Protocol, Waypoint, WaypointAddress, Workload};

//! `ambit-cni-agent`, the node agent: installs `ambit-cni` into the node's CNI chain, decides
//! which pods of the node are in the mesh (from Kubernetes or the local manifests), writes the
//! capture rules inside each enrolled pod and hands the pod's network namespace to ztunnel over
//! ZDS. Fails closed: an enrolled pod's ADD fails unless ztunnel took the pod.

pub mod agent;
pub mod app;
pub mod config;
pub mod discover;
pub mod enrollment;
pub mod install;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod source;
pub mod ztunnels;

//! Where the operator learns the cluster state: Kubernetes watches or a local manifest directory.
//! Both feed the same index.

pub mod kubernetes;

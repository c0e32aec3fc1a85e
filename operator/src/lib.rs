//! The Ambit operator: the cluster sources and index, the mesh CA and the workload xDS server,
//! wired together by [`app::Operator`].

pub mod app;
pub mod ca;
pub mod config;
pub mod grpc;
pub mod leader;
pub mod objects;
pub mod push;
pub mod source;
pub mod status;

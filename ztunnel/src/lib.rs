//! ztunnel: Ambit's per-node L4 data plane. For every captured pod on its node it listens inside
//! the pod's network namespace, carries outbound TCP to the destination's ztunnel over HBONE
//! (HTTP/2 CONNECT in mutual TLS 1.3 with SPIFFE identities), enforces PeerAuthentication and L4
//! authorization on the way in, and reports Istio-compatible TCP metrics. L7 is the waypoint's.

pub mod app;
pub mod certs;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod netns;
pub mod proxy;
pub mod source;

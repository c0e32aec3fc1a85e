//! Workload identity for Ambit: SPIFFE IDs, the CA that issues workload certificates, trust
//! bundles, and the rustls TLS 1.3 configs that authenticate HBONE peers by SPIFFE ID.
//!
//! It owns no I/O and no rotation loop: callers decide when to issue (see
//! [`WorkloadCertificate::renew_at`]) and hand the configs to `tokio_rustls`, re-exported here so
//! every crate uses the same version.

pub mod ca;
pub mod spiffe;
pub mod tls;
pub mod trust;

pub use ca::{CaError, CertificateAuthority, CertificateRequest, CsrError, ServingCertificate, WorkloadCertificate};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{TlsError, client_config, identity_of, peer_identity, server_config, server_name};
pub use trust::TrustBundle;
pub use {rustls, tokio_rustls};

//! The mesh CA: Istio's `CreateCertificate` gRPC service, which signs workload CSRs for callers
//! authenticated by bearer token and authorized for the identity they ask for, plus the root
//! material behind it (generated and persisted, or user-supplied) and the publishing of the root.
//! It does not serve gRPC (the operator's server mounts [`CaService::into_server`]) and does not
//! know the cluster: "which identities run on which node" comes in through [`NodeDirectory`].

mod auth;
mod authorize;
mod bootstrap;
mod metrics;
mod publish;
mod root;
mod service;
mod token_review;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use self::auth::{AuthError, Authenticator, Caller};
pub use self::authorize::NodeDirectory;
pub use self::bootstrap::{BootstrapError, BootstrapTokens};
pub use self::publish::{
    PublishError, ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY, ROOT_FILE, publish_root_everywhere, publish_root_to_namespace,
    root_config_map, write_root_file,
};
pub use self::root::{
    CA_CERT_KEY, CA_CHAIN_KEY, CA_KEY_KEY, CA_SECRET_NAME, CA_SECRET_NAMESPACE, ROOT_CERT_KEY, RootError, ca_from_pem,
    load_ca_files, load_or_create_secret, load_or_generate_in_dir,
};
pub use self::service::CaService;
pub use self::token_review::{DEFAULT_AUDIENCE, TokenReviewAuthenticator};

/// The metadata key under which Istio's ztunnel names the identity it asks for on a pod's behalf
/// (istio/ztunnel `src/identity/caclient.rs`); a string value holding the SPIFFE URI.
pub const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";

/// Istio's default workload certificate lifetime (`DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Istio's default cap on a requested lifetime (`MAX_WORKLOAD_CERT_TTL`, 90 days).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// How the CA signs and whom it lets impersonate.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// The trust domain of every identity this CA signs.
    pub trust_domain: String,
    /// Lifetime when the request asks for none (`validity_duration` ≤ 0).
    pub default_ttl: Duration,
    /// Longest lifetime handed out; longer requests are shortened to it.
    pub max_ttl: Duration,
    /// Service accounts (namespace, name) of ztunnels: they may ask for the identity of any pod
    /// on their own node.
    pub ztunnel_service_accounts: Vec<(String, String)>,
}

impl CaConfig {
    /// Istio's defaults: 24 h certificates, 90 days at most, ztunnel is `ambit-system/ztunnel`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            ztunnel_service_accounts: vec![("ambit-system".to_owned(), "ztunnel".to_owned())],
        }
    }

    /// The lifetime to issue for a request of `requested_secs` (Istio's `validity_duration`).
    pub fn ttl_for(&self, requested_secs: i64) -> Duration {
        match u64::try_from(requested_secs) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.max_ttl),
            _ => self.default_ttl.min(self.max_ttl),
        }
    }
}

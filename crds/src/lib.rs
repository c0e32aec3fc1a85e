//! The `ambit.dev/v1alpha1` custom resources (types, schemas, validation) and the Gateway API
//! subset Ambit reads.
//!
//! Each Ambit resource module owns its Rust types, the schema rules the API server enforces
//! (ranges, patterns, CEL) and a `validate()` with the same rules for sources that enforce none.
//! What the resources mean for the mesh is the index's business (`ambit-index`), not this crate's.

pub mod authorization_policy;
pub mod common;
pub mod fault_injection;
pub mod gateway_api;
pub mod peer_authentication;
pub mod traffic_policy;
pub mod validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use common::{DesiredCondition, PolicyStatus};
pub use fault_injection::{FaultInjection, FaultInjectionSpec};
pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use traffic_policy::{TrafficPolicy, TrafficPolicySpec};
pub use validation::{ValidationErrors, Violation};

/// The API group of the Ambit CRDs.
pub const GROUP: &str = "ambit.dev";

/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// The Ambit CRDs, in file-name order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        AuthorizationPolicy::crd(),
        FaultInjection::crd(),
        PeerAuthentication::crd(),
        TrafficPolicy::crd(),
    ]
}

/// One generated CRD manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFile {
    /// `<plural>.<group>.yaml`.
    pub file_name: String,
    pub yaml: String,
}

/// The CRD could not be rendered as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot render CRD {name} as YAML")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_norway::Error,
}

/// The header of every generated file, so nobody edits one by hand.
const GENERATED_HEADER: &str = "# Generated from the Rust types in crds/src; do not edit.\n\
                                # Regenerate with: cargo run -p ambit-crds --bin crdgen\n";

/// The YAML manifests `crdgen` writes, one per Ambit CRD. The output depends only on the types:
/// every map in a schema is ordered by key.
pub fn crd_files() -> Result<Vec<CrdFile>, RenderError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_norway::to_string(&crd).map_err(|source| RenderError {
                name: name.clone(),
                source,
            })?;
            let newline = if body.ends_with('\n') { "" } else { "\n" };
            Ok(CrdFile {
                file_name: format!("{name}.yaml"),
                yaml: format!("{GENERATED_HEADER}{body}{newline}"),
            })
        })
        .collect()
}

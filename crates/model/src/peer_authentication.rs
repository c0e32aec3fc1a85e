//! Peer authentication: whether a workload accepts plaintext from peers, mesh-, namespace-,
//! workload- and port-wide.
//!
//! The precedence between policies lives in [`crate::State::mtls_mode`]; this module owns the
//! types and which workloads a policy names.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::authorization::ROOT_NAMESPACE;
use crate::workload::{Labels, Workload};

/// A `PeerAuthentication` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// Workloads of the policy's namespace this applies to; `None` for the whole namespace (or the
    /// whole mesh in [`ROOT_NAMESPACE`]).
    pub selector: Option<Labels>,
    /// `None` is Istio's `UNSET`: inherit from the enclosing scope.
    pub mode: Option<MtlsMode>,
    /// Per workload port overrides; `None` values inherit like `mode`.
    pub port_level_mtls: BTreeMap<u16, Option<MtlsMode>>,
}

impl PeerAuthentication {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Mesh-wide: in the root namespace without a selector.
    pub fn is_mesh_wide(&self) -> bool {
        self.namespace == ROOT_NAMESPACE && self.selector.is_none()
    }

    /// The mode this policy sets for `port`: its port-level entry, else its own mode.
    pub fn mode_for_port(&self, port: u16) -> Option<MtlsMode> {
        self.port_level_mtls.get(&port).copied().flatten().or(self.mode)
    }

    /// Whether this is a workload-level policy selecting `workload`.
    pub fn selects(&self, workload: &Workload) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| self.namespace == workload.namespace && workload.matches_selector(s))
    }
}

/// Whether a workload requires mTLS from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum MtlsMode {
    /// Only mTLS (HBONE) connections are accepted.
    Strict,
    /// Both mTLS and plaintext are accepted.
    #[default]
    Permissive,
    /// mTLS is not required; ztunnel treats this like [`MtlsMode::Permissive`].
    Disable,
}

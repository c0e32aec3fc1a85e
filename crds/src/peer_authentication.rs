//! `PeerAuthentication`: whether workloads accept plaintext (Istio's shape: mesh, namespace or
//! workload scope, per-port overrides), its schema rules and [`PeerAuthentication::validate`].

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PolicyStatus, WorkloadSelector};
use crate::validation::{Checker, FieldPath, ValidationErrors};

/// Most port overrides one policy may hold; bounds the cost of its CEL rule.
const MAX_PORT_OVERRIDES: u32 = 64;

/// The mTLS requirement of the workloads in scope: the mesh (root namespace, no selector), a
/// namespace (no selector) or the selected workloads.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    doc = "An Ambit PeerAuthentication: whether workloads accept plaintext from peers.",
    status = "PolicyStatus",
    shortname = "pa",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mtls.mode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.portLevelMtls) || size(self.portLevelMtls) == 0 || has(self.selector)",
    "message": "portLevelMtls needs a selector: port numbers are only meaningful for chosen workloads"
}]))]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port without an override; absent is `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Overrides by workload port number (the container port, not a service port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = MAX_PORT_OVERRIDES))]
    #[schemars(extend(
        "maxProperties" = MAX_PORT_OVERRIDES,
        "x-kubernetes-validations" = [{
            "rule": "self.all(port, port.matches('^[0-9]{1,5}$') && int(port) >= 1 && int(port) <= 65535)",
            "message": "keys are ports (1-65535)"
        }]
    ))]
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

/// One mTLS setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Istio's modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum MtlsMode {
    /// Inherit from the enclosing scope (namespace, then mesh).
    #[default]
    Unset,
    /// Plaintext accepted; ztunnel treats it like PERMISSIVE.
    Disable,
    /// Both mTLS and plaintext are accepted.
    Permissive,
    /// Only mTLS.
    Strict,
}

impl PeerAuthentication {
    /// Checks the schema's rules: port keys in range, port overrides only with a selector.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut checker = Checker::default();
        let path = FieldPath::spec();
        let ports = &self.spec.port_level_mtls;
        if !ports.is_empty() && self.spec.selector.is_none() {
            checker.wrong(
                &path.field("portLevelMtls"),
                "portLevelMtls needs a selector: port numbers are only meaningful for chosen workloads",
            );
        }
        for port in ports.keys() {
            checker.port_text(&path.field("portLevelMtls").key(port), port);
        }
        checker.finish()
    }

    /// The port overrides with their ports parsed; entries whose key is not a port are left out
    /// ([`Self::validate`] reports them).
    pub fn port_modes(&self) -> impl Iterator<Item = (u16, MtlsMode)> + '_ {
        self.spec
            .port_level_mtls
            .iter()
            .filter_map(|(port, mtls)| Some((crate::validation::parse_port(port)?, mtls.mode)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> PeerAuthentication {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn valid_policy_round_trips() {
        let yaml = r#"
apiVersion: ambit.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "9090": {mode: DISABLE}
    8443: {mode: STRICT}
"#;
        let policy = parse(yaml);
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(policy.spec.mtls.map(|m| m.mode), Some(MtlsMode::Strict));
        assert_eq!(
            policy.port_modes().collect::<Vec<_>>(),
            vec![(8443, MtlsMode::Strict), (9090, MtlsMode::Disable)]
        );
        let again = parse(&serde_norway::to_string(&policy).unwrap_or_default());
        assert_eq!(again, policy);
    }

    #[test]
    fn unset_mode_is_the_default() {
        let policy =
            parse("metadata: {name: a}\nspec: {mtls: {}}\napiVersion: ambit.dev/v1alpha1\nkind: PeerAuthentication");
        assert_eq!(policy.spec.mtls.map(|m| m.mode), Some(MtlsMode::Unset));
    }

    #[test]
    fn port_overrides_need_a_selector_and_ports() {
        let mut policy = PeerAuthentication::new("p", PeerAuthenticationSpec::default());
        policy
            .spec
            .port_level_mtls
            .insert("0".into(), Mtls { mode: MtlsMode::Strict });
        policy.spec.port_level_mtls.insert("http".into(), Mtls::default());
        let error = policy.validate().err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "spec.portLevelMtls: portLevelMtls needs a selector: port numbers are only meaningful for chosen \
                 workloads; spec.portLevelMtls[\"0\"]: \"0\" is not a port (1-65535); spec.portLevelMtls[\"http\"]: \
                 \"http\" is not a port (1-65535)"
            )
        );
        assert_eq!(policy.port_modes().count(), 0);
    }
}

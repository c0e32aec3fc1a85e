//! Pieces several Ambit CRDs share: the workload selector, target references and the status
//! with its conditions. The resources themselves live in their own modules.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The workloads of the policy's namespace a policy applies to, by labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry; empty selects every workload of the namespace.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// API group of Gateway API kinds.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway API `LocalPolicyTargetReference`: an object of the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target: empty for core kinds (`Service`), `gateway.networking.k8s.io`
    /// for Gateway API kinds.
    #[serde(default)]
    pub group: String,
    #[schemars(length(min = 1))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A [`PolicyTargetReference`] that may name one part of the target: for a route, the `name` of
/// one of its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReferenceWithSectionName {
    #[serde(default)]
    pub group: String,
    #[schemars(length(min = 1))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// The status every Ambit CRD carries: standard conditions, one per type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Condition type: the object is valid and in effect.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Condition type: every object the resource refers to exists.
pub const CONDITION_RESOLVED_REFS: &str = "ResolvedRefs";
/// Condition type (as Istio's): whether ztunnel enforces the policy as written.
pub const CONDITION_ZTUNNEL_ACCEPTED: &str = "ZtunnelAccepted";

/// Reason: valid and in effect.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Reason: a field breaks a rule; the message says which.
pub const REASON_INVALID: &str = "Invalid";
/// Reason: every reference resolved.
pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
/// Reason: a referenced object does not exist.
pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
/// Reason (as Istio's): part of the policy cannot be enforced where it is bound.
pub const REASON_UNSUPPORTED_VALUE: &str = "UnsupportedValue";

/// A condition as the control plane wants it, before it is stamped with a time and written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DesiredCondition {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// The metav1 condition to write. `lastTransitionTime` moves to `now` only when the status
    /// changes from what `previous` (the object's current conditions) holds, as metav1 requires.
    pub fn to_condition(&self, observed_generation: Option<i64>, previous: &[Condition], now: &Time) -> Condition {
        let status = if self.status { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == self.type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: self.type_.clone(),
            status: status.to_owned(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation,
            last_transition_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap_or_default());
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap_or_default());
        let accepted = DesiredCondition::new(CONDITION_ACCEPTED, true, REASON_ACCEPTED, "ok");
        let first = accepted.to_condition(Some(1), &[], &earlier);
        assert_eq!(first.last_transition_time, earlier);
        assert_eq!(first.status, "True");
        let same = accepted.to_condition(Some(2), std::slice::from_ref(&first), &now);
        assert_eq!(same.last_transition_time, earlier);
        assert_eq!(same.observed_generation, Some(2));
        let invalid = DesiredCondition::new(CONDITION_ACCEPTED, false, REASON_INVALID, "bad");
        let flipped = invalid.to_condition(Some(3), &[first], &now);
        assert_eq!(flipped.last_transition_time, now);
        assert_eq!(flipped.status, "False");
    }
}

//! The status the operator should write on each Ambit CRD object: `Accepted` (valid or not, and
//! why), `ResolvedRefs` for objects that point at others, and `ZtunnelAccepted` for authorization
//! policies ztunnel enforces (False when L7 content had to be dropped or ignored).

use ambit_crds::DesiredCondition;
use ambit_crds::common::{
    CONDITION_ACCEPTED, CONDITION_RESOLVED_REFS, CONDITION_ZTUNNEL_ACCEPTED, REASON_ACCEPTED, REASON_INVALID,
    REASON_RESOLVED_REFS, REASON_TARGET_NOT_FOUND, REASON_UNSUPPORTED_VALUE,
};
use ambit_crds::{AuthorizationPolicy, ValidationErrors};

use crate::index::{Index, key};
use crate::object::{Kind, ObjectKey};
use crate::policies::{targets, translate};

/// The desired status of one object, for its `metadata.generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    /// The object's `metadata.generation`: each condition's `observedGeneration`.
    pub observed_generation: Option<i64>,
    pub conditions: Vec<DesiredCondition>,
}

fn accepted(result: Result<(), ValidationErrors>, what: &str) -> DesiredCondition {
    match result {
        Ok(()) => DesiredCondition::new(CONDITION_ACCEPTED, true, REASON_ACCEPTED, what),
        Err(errors) => DesiredCondition::new(CONDITION_ACCEPTED, false, REASON_INVALID, errors.to_string()),
    }
}

impl Index {
    /// The status of `object`, or `None` when it is not (or no longer) stored.
    pub(crate) fn status(&self, object: &ObjectKey) -> Option<ObjectStatus> {
        let object_key = key(&object.namespace, &object.name);
        let (generation, mut conditions, valid) = match object.kind {
            Kind::AuthorizationPolicy => {
                let policy = self.authorization_policy_objects.get(&object_key)?;
                let (conditions, valid) = self.authorization_conditions(object, policy);
                (policy.metadata.generation, conditions, valid)
            }
            Kind::PeerAuthentication => {
                let policy = self.peer_authentication_objects.get(&object_key)?;
                let condition = accepted(policy.validate(), "enforced by ztunnel");
                (policy.metadata.generation, vec![condition], false)
            }
            Kind::TrafficPolicy => {
                let policy = self.traffic_policy_objects.get(&object_key)?;
                let result = policy.validate();
                let valid = result.is_ok();
                (
                    policy.metadata.generation,
                    vec![accepted(result, "applied by the waypoint")],
                    valid,
                )
            }
            Kind::FaultInjection => {
                let fault = self.fault_injection_objects.get(&object_key)?;
                let result = fault.validate();
                let valid = result.is_ok();
                (
                    fault.metadata.generation,
                    vec![accepted(result, "applied by the waypoint")],
                    valid,
                )
            }
            _ => return None,
        };
        let refers = matches!(object.kind, Kind::TrafficPolicy | Kind::FaultInjection)
            || (object.kind == Kind::AuthorizationPolicy && !targets(object.kind, self, &object_key).is_empty());
        if valid && refers {
            conditions.push(self.resolved_refs(object, &object_key));
        }
        Some(ObjectStatus {
            observed_generation: generation,
            conditions,
        })
    }

    /// `Accepted`, and for a selector-bound policy `ZtunnelAccepted`; also whether it is valid
    /// and waypoint-bound (then `ResolvedRefs` follows).
    fn authorization_conditions(
        &self,
        object: &ObjectKey,
        policy: &AuthorizationPolicy,
    ) -> (Vec<DesiredCondition>, bool) {
        if let Err(errors) = policy.validate() {
            return (vec![accepted(Err(errors), "")], false);
        }
        if !policy.spec.target_refs.is_empty() {
            return (vec![accepted(Ok(()), "bound to its targets' waypoint")], true);
        }
        let translation = translate(&object.namespace, &object.name, policy);
        let ztunnel = if translation.l7_fields.is_empty() {
            DesiredCondition::new(CONDITION_ZTUNNEL_ACCEPTED, true, REASON_ACCEPTED, "enforced by ztunnel")
        } else {
            let found = translation.l7_fields.into_iter().collect::<Vec<_>>().join(", ");
            let effect = if translation.policy.action == ambit_model::Action::Allow {
                "within an ALLOW policy, rules with HTTP attributes are left out, so it allows less than written"
            } else {
                "within a DENY or AUDIT policy, the HTTP attributes are ignored, so it matches more than written"
            };
            let message = format!(
                "ztunnel does not support HTTP attributes (found: {found}); bind the policy to a waypoint with \
                 targetRefs to enforce them; {effect}"
            );
            DesiredCondition::new(CONDITION_ZTUNNEL_ACCEPTED, false, REASON_UNSUPPORTED_VALUE, message)
        };
        (vec![accepted(Ok(()), "enforced by ztunnel"), ztunnel], false)
    }

    fn resolved_refs(&self, object: &ObjectKey, object_key: &String) -> DesiredCondition {
        let missing: Vec<String> = targets(object.kind, self, object_key)
            .into_iter()
            .filter(|target| !self.target_exists(target, object, object_key))
            .map(|target| target.to_string())
            .collect();
        if missing.is_empty() {
            DesiredCondition::new(
                CONDITION_RESOLVED_REFS,
                true,
                REASON_RESOLVED_REFS,
                "every target exists",
            )
        } else {
            let message = format!("not found: {}", missing.join(", "));
            DesiredCondition::new(CONDITION_RESOLVED_REFS, false, REASON_TARGET_NOT_FOUND, message)
        }
    }

    /// Whether `target` exists; for a fault injection naming a route rule, whether the rule does.
    fn target_exists(&self, target: &ObjectKey, object: &ObjectKey, object_key: &String) -> bool {
        let target_key = key(&target.namespace, &target.name);
        let section = (object.kind == Kind::FaultInjection)
            .then(|| self.fault_injection_objects.get(object_key))
            .flatten()
            .and_then(|f| f.spec.target_ref.section_name.clone());
        let has_rule = |mut names: std::slice::Iter<'_, Option<String>>| {
            section.as_ref().is_none_or(|s| names.any(|n| n.as_ref() == Some(s)))
        };
        match target.kind {
            Kind::Service => self.kube_services.contains_key(&target_key),
            Kind::Gateway => self.gateways.contains_key(&target_key),
            Kind::HttpRoute => self.http_routes.get(&target_key).is_some_and(|r| {
                let names: Vec<Option<String>> = r.spec.rules.iter().map(|rule| rule.name.clone()).collect();
                has_rule(names.iter())
            }),
            Kind::GrpcRoute => self.grpc_routes.get(&target_key).is_some_and(|r| {
                let names: Vec<Option<String>> = r.spec.rules.iter().map(|rule| rule.name.clone()).collect();
                has_rule(names.iter())
            }),
            _ => false,
        }
    }
}

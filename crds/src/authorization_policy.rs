//! `AuthorizationPolicy`: Istio's security API shape (selector or targetRefs, ALLOW/DENY/AUDIT,
//! rules of from/to/when), its schema rules and the same rules as [`AuthorizationPolicy::validate`].
//!
//! Which parts ztunnel can enforce and how they become the data-plane model is the index's job.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{GATEWAY_API_GROUP, PolicyStatus, PolicyTargetReference, WorkloadSelector};
use crate::validation::{
    CONDITION_KEY_PATTERN, Checker, FieldPath, PORT_PATTERN, ValidationErrors, is_condition_key, parse_port,
};

/// Most entries a list of IP blocks may hold; bounds the cost of its CEL rule.
const MAX_IP_BLOCKS: u32 = 256;

/// Access control for workloads (enforced by ztunnel, L4) or for what a waypoint serves (L7).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    doc = "An Ambit AuthorizationPolicy: L4 access control enforced by ztunnel, L7 by waypoints.",
    status = "PolicyStatus",
    shortname = "ap",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.selector) && has(self.targetRefs) && size(self.targetRefs) > 0)",
        "message": "selector and targetRefs are mutually exclusive"
    },
    {
        "rule": "!has(self.action) || self.action == 'ALLOW' || (has(self.rules) && size(self.rules) > 0)",
        "message": "a DENY or AUDIT policy needs rules: without any it matches nothing"
    }
]))]
pub struct AuthorizationPolicySpec {
    /// Workloads of this namespace the policy applies to (enforced by ztunnel); absent with no
    /// targetRefs: every workload of the namespace (of the mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Waypoints (`Gateway`) or services (`Service`) whose waypoint enforces the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(t, (t.group == 'gateway.networking.k8s.io' && t.kind == 'Gateway') || (t.group == '' && t.kind == 'Service'))",
        "message": "a target is a Gateway (group gateway.networking.k8s.io) or a Service (group \"\")"
    }]))]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub action: Action,
    /// The policy matches a request when any rule does. An ALLOW policy without rules allows
    /// nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// What a matching policy does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Action {
    /// Once an ALLOW policy applies, only requests matching some ALLOW policy pass.
    #[default]
    Allow,
    /// Matching requests are refused, whatever the ALLOW policies say.
    Deny,
    /// Matching requests are logged; the decision is unchanged.
    Audit,
}

/// A rule matches when all of its `from`, `to` and `when` parts do; an absent part matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Matches when any source does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Matches when any operation does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Matches when every condition does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
/// One `from` entry.
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
/// One `to` entry.
pub struct RuleTo {
    pub operation: Operation,
}

/// Who sends the request. Every field set must match; `not*` fields exclude.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct Source {
    /// Peer identities `<trust domain>/ns/<namespace>/sa/<service account>`; `*` and one leading
    /// or trailing `*` match like Istio's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_namespaces: Vec<String>,
    /// Source IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_IP_BLOCKS), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(b, isIP(b) || isCIDR(b))",
        "message": "each entry is an IP address or a CIDR block"
    }]))]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_IP_BLOCKS), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(b, isIP(b) || isCIDR(b))",
        "message": "each entry is an IP address or a CIDR block"
    }]))]
    pub not_ip_blocks: Vec<String>,
}

/// What the request does. Ports are L4; methods, paths and hosts need a waypoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct Operation {
    /// Destination ports, as strings (as Istio writes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(PORT_PATTERN)))]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(PORT_PATTERN)))]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_hosts: Vec<String>,
}

impl Operation {
    /// The L7 fields this operation sets, by name.
    pub fn l7_fields(&self) -> Vec<&'static str> {
        [
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(name, _)| name)
        .collect()
    }
}

/// An extra condition on one of Istio's attribute keys (`source.ip`, `request.headers[x]`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.values) && size(self.values) > 0) || (has(self.notValues) && size(self.notValues) > 0)",
    "message": "a condition needs values or notValues"
}]))]
pub struct Condition {
    #[schemars(pattern(CONDITION_KEY_PATTERN))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicy {
    /// Checks every rule of the schema, and the values of L4 `when` keys, which the schema cannot.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut checker = Checker::default();
        let spec = &self.spec;
        let path = FieldPath::spec();
        if spec.selector.is_some() && !spec.target_refs.is_empty() {
            checker.wrong(&path, "selector and targetRefs are mutually exclusive");
        }
        if spec.action != Action::Allow && spec.rules.is_empty() {
            checker.wrong(
                &path.field("rules"),
                "a DENY or AUDIT policy needs rules: without any it matches nothing",
            );
        }
        for (n, target) in spec.target_refs.iter().enumerate() {
            let target_path = path.field("targetRefs").index(n);
            let supported = (target.group == GATEWAY_API_GROUP && target.kind == "Gateway")
                || (target.group.is_empty() && target.kind == "Service");
            if !supported {
                checker.invalid(
                    &target_path.field("kind"),
                    format!("{}/{}", target.group, target.kind),
                    "is not a target: use Gateway (group gateway.networking.k8s.io) or Service (group \"\")",
                );
            }
            checker.not_empty(&target_path.field("name"), &target.name);
        }
        for (n, rule) in spec.rules.iter().enumerate() {
            check_rule(&mut checker, &path.field("rules").index(n), rule);
        }
        checker.finish()
    }
}

fn check_rule(checker: &mut Checker, path: &FieldPath, rule: &Rule) {
    for (n, from) in rule.from.iter().enumerate() {
        let path = path.field("from").index(n).field("source");
        let source = &from.source;
        let lists = [
            ("principals", &source.principals),
            ("notPrincipals", &source.not_principals),
            ("namespaces", &source.namespaces),
            ("notNamespaces", &source.not_namespaces),
            ("ipBlocks", &source.ip_blocks),
            ("notIpBlocks", &source.not_ip_blocks),
        ];
        if lists.iter().all(|(_, list)| list.is_empty()) {
            checker.wrong(&path, "a source needs at least one field");
        }
        for (name, list) in lists {
            for (k, value) in list.iter().enumerate() {
                if name.ends_with("pBlocks") {
                    checker.ip_block(&path.field(name).index(k), value);
                } else {
                    checker.not_empty(&path.field(name).index(k), value);
                }
            }
        }
    }
    for (n, to) in rule.to.iter().enumerate() {
        let path = path.field("to").index(n).field("operation");
        let operation = &to.operation;
        let lists = [
            ("ports", &operation.ports),
            ("notPorts", &operation.not_ports),
            ("methods", &operation.methods),
            ("notMethods", &operation.not_methods),
            ("paths", &operation.paths),
            ("notPaths", &operation.not_paths),
            ("hosts", &operation.hosts),
            ("notHosts", &operation.not_hosts),
        ];
        if lists.iter().all(|(_, list)| list.is_empty()) {
            checker.wrong(&path, "an operation needs at least one field");
        }
        for (name, list) in lists {
            for (k, value) in list.iter().enumerate() {
                if name.ends_with("orts") {
                    checker.port_text(&path.field(name).index(k), value);
                } else {
                    checker.not_empty(&path.field(name).index(k), value);
                }
            }
        }
    }
    for (n, condition) in rule.when.iter().enumerate() {
        check_condition(checker, &path.field("when").index(n), condition);
    }
}

fn check_condition(checker: &mut Checker, path: &FieldPath, condition: &Condition) {
    if !is_condition_key(&condition.key) {
        checker.invalid(
            &path.field("key"),
            &condition.key,
            "is not a condition key Istio defines",
        );
    }
    if condition.values.is_empty() && condition.not_values.is_empty() {
        checker.wrong(path, "a condition needs values or notValues");
    }
    for (name, list) in [("values", &condition.values), ("notValues", &condition.not_values)] {
        for (k, value) in list.iter().enumerate() {
            let value_path = path.field(name).index(k);
            match condition.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => checker.ip_block(&value_path, value),
                "destination.port" => {
                    if parse_port(value).is_none() {
                        checker.invalid(&value_path, value, "is not a port (1-65535)");
                    }
                }
                _ => checker.not_empty(&value_path, value),
            }
        }
    }
}

#[cfg(test)]
mod tests;

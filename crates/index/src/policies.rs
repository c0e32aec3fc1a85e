//! Ambit policy CRDs in, policy outputs out: authorization policies translated to ztunnel's L4
//! model (failing closed on L7 content, as Istio does), peer authentications, and the traffic
//! policies and fault injections kept for the waypoint.
//!
//! Statuses are [`crate::status`]'s; this module decides what each valid object becomes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_crds::authorization_policy::{self as crd_authz, Operation, Source};
use ambit_crds::common::GATEWAY_API_GROUP;
use ambit_crds::peer_authentication::MtlsMode as CrdMtlsMode;
use ambit_crds::validation::{L4_CONDITION_KEYS, parse_port};
use ambit_crds::{AuthorizationPolicy, FaultInjection, PeerAuthentication, TrafficPolicy};
use ambit_model::authorization::{Clause, Match, Rule};
use ambit_model::{self as model, Action, MtlsMode, PolicyScope, ROOT_NAMESPACE, StringMatch};
use ipnet::IpNet;

use crate::index::{Index, Key, replace_if_changed};
use crate::object::{Kind, ObjectKey};

/// An authorization policy as ztunnel will enforce it, and the L7 fields that were dropped or
/// ignored on the way (for the status).
pub(crate) struct Translation {
    pub(crate) policy: model::AuthorizationPolicy,
    pub(crate) l7_fields: BTreeSet<String>,
}

/// Translates a valid, selector-bound policy. Istio's rules for ztunnel: `from` is one clause of
/// sources, `to` one of operations, each `when` a clause of its own. A rule with L7 content
/// (methods, paths, hosts, non-L4 `when` keys) is dropped from an ALLOW policy, so it allows
/// less; in a DENY or AUDIT policy the L7 parts are ignored, so it matches more.
pub(crate) fn translate(namespace: &str, name: &str, policy: &AuthorizationPolicy) -> Translation {
    let spec = &policy.spec;
    let scope = match &spec.selector {
        Some(selector) => PolicyScope::WorkloadSelector(selector.match_labels.clone()),
        None if namespace == ROOT_NAMESPACE => PolicyScope::Global,
        None => PolicyScope::Namespace,
    };
    // An action this index does not know yet becomes an ALLOW with no rules: it allows nothing.
    let action = match spec.action {
        crd_authz::Action::Allow => Some(Action::Allow),
        crd_authz::Action::Deny => Some(Action::Deny),
        crd_authz::Action::Audit => Some(Action::Audit),
        _ => None,
    };
    let mut l7_fields = BTreeSet::new();
    let mut rules = Vec::new();
    for rule in spec.rules.iter().filter(|_| action.is_some()) {
        let mut rule_l7 = BTreeSet::new();
        let mut clauses = Vec::new();
        if !rule.from.is_empty() {
            clauses.push(Clause {
                matches: rule.from.iter().map(|from| source_match(&from.source)).collect(),
            });
        }
        if !rule.to.is_empty() {
            for to in &rule.to {
                rule_l7.extend(
                    to.operation
                        .l7_fields()
                        .into_iter()
                        .map(|f| format!("to.operation.{f}")),
                );
            }
            clauses.push(Clause {
                matches: rule.to.iter().map(|to| operation_match(&to.operation)).collect(),
            });
        }
        for condition in &rule.when {
            match condition_match(condition) {
                Some(matched) => clauses.push(Clause { matches: vec![matched] }),
                None => {
                    rule_l7.insert(format!("when.key {}", condition.key));
                }
            }
        }
        let keep = rule_l7.is_empty() || action != Some(Action::Allow);
        l7_fields.append(&mut rule_l7);
        if keep {
            rules.push(Rule { clauses });
        }
    }
    Translation {
        policy: model::AuthorizationPolicy {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action: action.unwrap_or(Action::Allow),
            rules,
        },
        l7_fields,
    }
}

fn patterns(list: &[String]) -> Vec<StringMatch> {
    list.iter().map(|p| StringMatch::parse(p)).collect()
}

/// An IP block as a network; a bare address is a one-address network. Validation has already
/// refused anything else, which is skipped here.
fn ip_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn ip_nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|t| ip_net(t)).collect()
}

fn source_match(source: &Source) -> Match {
    Match {
        principals: patterns(&source.principals),
        not_principals: patterns(&source.not_principals),
        namespaces: patterns(&source.namespaces),
        not_namespaces: patterns(&source.not_namespaces),
        source_ips: ip_nets(&source.ip_blocks),
        not_source_ips: ip_nets(&source.not_ip_blocks),
        ..Match::default()
    }
}

/// The L4 part of an operation; its L7 fields are the caller's to account for.
fn operation_match(operation: &Operation) -> Match {
    let ports = |list: &[String]| list.iter().filter_map(|p| parse_port(p)).collect();
    Match {
        destination_ports: ports(&operation.ports),
        not_destination_ports: ports(&operation.not_ports),
        ..Match::default()
    }
}

/// The match of an L4 `when` condition; `None` for keys only a waypoint can evaluate.
fn condition_match(condition: &crd_authz::Condition) -> Option<Match> {
    if !L4_CONDITION_KEYS.contains(&condition.key.as_str()) {
        return None;
    }
    let (values, not_values) = (&condition.values, &condition.not_values);
    let mut matched = Match::default();
    match condition.key.as_str() {
        "source.ip" | "remote.ip" => {
            matched.source_ips = ip_nets(values);
            matched.not_source_ips = ip_nets(not_values);
        }
        "destination.ip" => {
            matched.destination_ips = ip_nets(values);
            matched.not_destination_ips = ip_nets(not_values);
        }
        "destination.port" => {
            matched.destination_ports = values.iter().filter_map(|p| parse_port(p)).collect();
            matched.not_destination_ports = not_values.iter().filter_map(|p| parse_port(p)).collect();
        }
        "source.principal" => {
            matched.principals = patterns(values);
            matched.not_principals = patterns(not_values);
        }
        _ => {
            matched.namespaces = patterns(values);
            matched.not_namespaces = patterns(not_values);
        }
    }
    Some(matched)
}

fn peer_authentication(namespace: &str, name: &str, policy: &PeerAuthentication) -> model::PeerAuthentication {
    model::PeerAuthentication {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector: policy.spec.selector.as_ref().map(|s| s.match_labels.clone()),
        mode: policy.spec.mtls.and_then(|m| mtls_mode(m.mode)),
        port_level_mtls: policy
            .port_modes()
            .map(|(port, mode)| (port, mtls_mode(mode)))
            .collect(),
    }
}

/// `UNSET` is `None` (inherit); a mode this index does not know yet is taken as STRICT.
fn mtls_mode(mode: CrdMtlsMode) -> Option<MtlsMode> {
    match mode {
        CrdMtlsMode::Unset => None,
        CrdMtlsMode::Disable => Some(MtlsMode::Disable),
        CrdMtlsMode::Permissive => Some(MtlsMode::Permissive),
        _ => Some(MtlsMode::Strict),
    }
}

fn split(key: &Key) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// The objects an Ambit object refers to; its status says whether they exist.
pub(crate) fn targets(kind: Kind, index: &Index, key: &Key) -> Vec<ObjectKey> {
    let (namespace, _) = split(key);
    let target = |group: &str, kind: &str, name: &str| {
        let kind = match (group, kind) {
            ("", "Service") => Kind::Service,
            (GATEWAY_API_GROUP, "Gateway") => Kind::Gateway,
            (GATEWAY_API_GROUP, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_API_GROUP, "GRPCRoute") => Kind::GrpcRoute,
            _ => return None,
        };
        Some(ObjectKey::new(kind, namespace, name))
    };
    match kind {
        Kind::AuthorizationPolicy => index.authorization_policy_objects.get(key).map_or_else(Vec::new, |p| {
            let refs = p.spec.target_refs.iter();
            refs.filter_map(|t| target(&t.group, &t.kind, &t.name)).collect()
        }),
        Kind::TrafficPolicy => index.traffic_policy_objects.get(key).map_or_else(Vec::new, |p| {
            let t = &p.spec.target_ref;
            target(&t.group, &t.kind, &t.name).into_iter().collect()
        }),
        Kind::FaultInjection => index.fault_injection_objects.get(key).map_or_else(Vec::new, |f| {
            let t = &f.spec.target_ref;
            target(&t.group, &t.kind, &t.name).into_iter().collect()
        }),
        _ => Vec::new(),
    }
}

impl Index {
    /// Swaps the stored Ambit object, keeping the referrer index in step, and marks its status.
    fn track_references(&mut self, kind: Kind, key: &Key, before: Vec<ObjectKey>) {
        let object = ObjectKey::new(kind, split(key).0, split(key).1);
        for target in before {
            if let Some(referrers) = self.referrers.get_mut(&target) {
                referrers.remove(&object);
                if referrers.is_empty() {
                    self.referrers.remove(&target);
                }
            }
        }
        for target in targets(kind, self, key) {
            self.referrers.entry(target).or_default().insert(object.clone());
        }
        self.dirty_status(object);
    }

    pub(crate) fn apply_authorization_policy(&mut self, key: Key, policy: Option<Arc<AuthorizationPolicy>>) {
        let before = targets(Kind::AuthorizationPolicy, self, &key);
        let (namespace, name) = split(&key);
        let (mut ztunnel, mut waypoint) = (None, None);
        if let Some(policy) = &policy
            && policy.validate().is_ok()
        {
            if policy.spec.target_refs.is_empty() {
                ztunnel = Some(Arc::new(translate(namespace, name, policy).policy));
            } else {
                waypoint = Some(Arc::clone(policy));
            }
        }
        match policy {
            Some(policy) => self.authorization_policy_objects.insert(key.clone(), policy),
            None => self.authorization_policy_objects.remove(&key),
        };
        let changes = &mut self.changes;
        replace_if_changed(
            &mut self.authorization_policies,
            &mut changes.authorization_policies,
            key.clone(),
            ztunnel,
        );
        replace_if_changed(
            &mut self.waypoint_policies,
            &mut changes.waypoint_policies,
            key.clone(),
            waypoint,
        );
        self.track_references(Kind::AuthorizationPolicy, &key, before);
    }

    pub(crate) fn apply_peer_authentication(&mut self, key: Key, policy: Option<Arc<PeerAuthentication>>) {
        let (namespace, name) = split(&key);
        let output = policy
            .as_deref()
            .filter(|p| p.validate().is_ok())
            .map(|p| Arc::new(peer_authentication(namespace, name, p)));
        match policy {
            Some(policy) => self.peer_authentication_objects.insert(key.clone(), policy),
            None => self.peer_authentication_objects.remove(&key),
        };
        let changes = &mut self.changes.peer_authentications;
        replace_if_changed(&mut self.peer_authentications, changes, key.clone(), output);
        self.track_references(Kind::PeerAuthentication, &key, Vec::new());
    }

    pub(crate) fn apply_traffic_policy(&mut self, key: Key, policy: Option<Arc<TrafficPolicy>>) {
        let before = targets(Kind::TrafficPolicy, self, &key);
        let output = policy.clone().filter(|p| p.validate().is_ok());
        match policy {
            Some(policy) => self.traffic_policy_objects.insert(key.clone(), policy),
            None => self.traffic_policy_objects.remove(&key),
        };
        let changes = &mut self.changes.traffic_policies;
        replace_if_changed(&mut self.traffic_policies, changes, key.clone(), output);
        self.track_references(Kind::TrafficPolicy, &key, before);
    }

    pub(crate) fn apply_fault_injection(&mut self, key: Key, fault: Option<Arc<FaultInjection>>) {
        let before = targets(Kind::FaultInjection, self, &key);
        let output = fault.clone().filter(|f| f.validate().is_ok());
        match fault {
            Some(fault) => self.fault_injection_objects.insert(key.clone(), fault),
            None => self.fault_injection_objects.remove(&key),
        };
        let changes = &mut self.changes.fault_injections;
        replace_if_changed(&mut self.fault_injections, changes, key.clone(), output);
        self.track_references(Kind::FaultInjection, &key, before);
    }
}

use std::net::IpAddr;

use ambit_model::authorization::{ConnectionInfo, evaluate};
use ambit_model::{Action, MtlsMode, PolicyScope};
use serde_json::json;

use super::*;
use crate::Kind;

fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> ambit_crds::AuthorizationPolicy {
    from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": spec
    }))
}

fn connection(principal: Option<&'static str>, port: u16) -> ConnectionInfo<'static> {
    ConnectionInfo {
        source_principal: principal,
        source_namespace: None,
        source_ip: "10.1.2.3".parse::<IpAddr>().expect("ip"),
        destination_ip: "10.0.0.1".parse::<IpAddr>().expect("ip"),
        destination_port: port,
    }
}

fn decide(index: &Index, key: &str, conn: &ConnectionInfo<'_>) -> bool {
    let policy = index.authorization_policies().get(key).cloned().expect("policy");
    evaluate([&*policy], conn).allowed
}

const FRONTEND: &str = "cluster.local/ns/shop/sa/frontend";

#[test]
fn l4_policy_translates_like_istio() {
    let mut index = index();
    let spec = json!({
        "selector": {"matchLabels": {"app": "api"}},
        "rules": [{
            "from": [{"source": {"principals": [FRONTEND], "notIpBlocks": ["10.9.0.0/16", "10.1.2.4"]}}],
            "to": [{"operation": {"ports": ["8080"]}}],
            "when": [{"key": "source.namespace", "values": ["shop"]}]
        }]
    });
    apply(&mut index, policy("shop", "allow-frontend", spec));
    let translated = index
        .authorization_policies()
        .get("shop/allow-frontend")
        .cloned()
        .expect("policy");
    assert_eq!(translated.action, Action::Allow);
    assert_eq!(
        translated.scope,
        PolicyScope::WorkloadSelector([("app".into(), "api".into())].into())
    );
    assert_eq!(translated.rules.len(), 1);
    assert_eq!(translated.rules[0].clauses.len(), 3);
    let not_ips: Vec<String> = translated.rules[0].clauses[0].matches[0]
        .not_source_ips
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(not_ips, ["10.9.0.0/16", "10.1.2.4/32"]);
    assert!(decide(&index, "shop/allow-frontend", &connection(Some(FRONTEND), 8080)));
    assert!(!decide(
        &index,
        "shop/allow-frontend",
        &connection(Some(FRONTEND), 9090)
    ));
    assert!(!decide(&index, "shop/allow-frontend", &connection(None, 8080)));
}

#[test]
fn scopes() {
    let mut index = index();
    apply(&mut index, policy("shop", "ns-wide", json!({})));
    apply(&mut index, policy("ambit-system", "mesh-wide", json!({})));
    apply(
        &mut index,
        policy(
            "ambit-system",
            "root-selector",
            json!({"selector": {"matchLabels": {"a": "b"}}}),
        ),
    );
    let scope = |key: &str| index.authorization_policies().get(key).map(|p| p.scope.clone());
    assert_eq!(scope("shop/ns-wide"), Some(PolicyScope::Namespace));
    assert_eq!(scope("ambit-system/mesh-wide"), Some(PolicyScope::Global));
    assert!(matches!(
        scope("ambit-system/root-selector"),
        Some(PolicyScope::WorkloadSelector(_))
    ));
    // An ALLOW without rules allows nothing.
    assert!(!decide(&index, "shop/ns-wide", &connection(Some(FRONTEND), 80)));
}

#[test]
fn allow_rules_with_l7_fields_are_dropped() {
    let mut index = index();
    let spec = json!({
        "rules": [
            {"from": [{"source": {"principals": [FRONTEND]}}], "to": [{"operation": {"methods": ["GET"]}}]},
            {"to": [{"operation": {"ports": ["9090"]}}]}
        ]
    });
    apply(&mut index, policy("shop", "http-allow", spec));
    let translated = index
        .authorization_policies()
        .get("shop/http-allow")
        .cloned()
        .expect("policy");
    assert_eq!(translated.rules.len(), 1, "the GET rule is gone");
    // The frontend is no longer allowed on 8080 (it would have been for GET): fail closed.
    assert!(!decide(&index, "shop/http-allow", &connection(Some(FRONTEND), 8080)));
    assert!(decide(&index, "shop/http-allow", &connection(None, 9090)));
}

#[test]
fn deny_rules_ignore_l7_fields() {
    let mut index = index();
    let spec = json!({
        "action": "DENY",
        "rules": [{
            "from": [{"source": {"namespaces": ["untrusted"]}}],
            "to": [{"operation": {"paths": ["/admin"]}}],
            "when": [{"key": "request.headers[x-debug]", "values": ["1"]}]
        }]
    });
    apply(&mut index, policy("shop", "deny-admin", spec));
    let translated = index
        .authorization_policies()
        .get("shop/deny-admin")
        .cloned()
        .expect("policy");
    assert_eq!(translated.action, Action::Deny);
    assert_eq!(
        translated.rules[0].clauses.len(),
        2,
        "from, and a to that matches every port"
    );
    // Every connection from `untrusted` is denied, whatever the path.
    let conn = ConnectionInfo {
        source_namespace: Some("untrusted"),
        ..connection(Some("cluster.local/ns/untrusted/sa/x"), 80)
    };
    assert!(!decide(&index, "shop/deny-admin", &conn));
    assert!(decide(&index, "shop/deny-admin", &connection(Some(FRONTEND), 80)));
}

#[test]
fn waypoint_policies_stay_away_from_ztunnel() {
    let mut index = index();
    let spec = json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}],
        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]
    });
    apply(&mut index, policy("shop", "l7", spec));
    assert!(index.authorization_policies().is_empty());
    assert!(index.waypoint_policies().contains_key("shop/l7"));
    let changes = index.drain_changes();
    assert_eq!(changes.waypoint_policies.upserted, set(&["shop/l7"]));
    assert!(changes.authorization_policies.is_empty());
    // Rebinding it by selector moves it to ztunnel.
    apply(
        &mut index,
        policy(
            "shop",
            "l7",
            json!({"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]}),
        ),
    );
    let changes = index.drain_changes();
    assert_eq!(changes.waypoint_policies.removed, set(&["shop/l7"]));
    assert_eq!(changes.authorization_policies.upserted, set(&["shop/l7"]));
}

#[test]
fn invalid_policies_are_not_output() {
    let mut index = index();
    apply(
        &mut index,
        policy(
            "shop",
            "ok",
            json!({"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]}),
        ),
    );
    index.drain_changes();
    // The same policy made invalid disappears from the output.
    apply(
        &mut index,
        policy(
            "shop",
            "ok",
            json!({"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]}),
        ),
    );
    assert!(index.authorization_policies().is_empty());
    assert_eq!(index.drain_changes().authorization_policies.removed, set(&["shop/ok"]));
    index.delete(Kind::AuthorizationPolicy, "shop", "ok");
    assert!(index.statuses().is_empty());
}

#[test]
fn peer_authentication_translates() {
    let mut index = index();
    let strict: ambit_crds::PeerAuthentication = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "db"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}, "9091": {"mode": "UNSET"}}
        }
    }));
    apply(&mut index, strict);
    let unset: ambit_crds::PeerAuthentication = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {}
    }));
    apply(&mut index, unset);
    let db = index.peer_authentications().get("shop/db").cloned().expect("policy");
    assert_eq!(db.mode, Some(MtlsMode::Strict));
    assert_eq!(db.selector, Some([("app".into(), "db".into())].into()));
    assert_eq!(db.mode_for_port(9090), Some(MtlsMode::Permissive));
    assert_eq!(db.mode_for_port(9091), Some(MtlsMode::Strict));
    let default = index
        .peer_authentications()
        .get("shop/default")
        .cloned()
        .expect("policy");
    assert_eq!((default.mode, default.selector.clone()), (None, None));
    index.delete(Kind::PeerAuthentication, "shop", "db");
    assert_eq!(index.drain_changes().peer_authentications.removed, set(&["shop/db"]));
}

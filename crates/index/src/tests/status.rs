use ambit_crds::DesiredCondition;
use serde_json::json;

use super::*;
use crate::{Kind, ObjectKey};

fn condition<'s>(index: &'s Index, object: &ObjectKey, type_: &str) -> Option<&'s DesiredCondition> {
    index
        .statuses()
        .get(object)?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn ap(name: &str, generation: i64, spec: serde_json::Value) -> ambit_crds::AuthorizationPolicy {
    from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": generation},
        "spec": spec
    }))
}

#[test]
fn invalid_objects_are_not_accepted() {
    let mut index = index();
    apply(
        &mut index,
        ap(
            "bad",
            3,
            json!({"rules": [{"to": [{"operation": {"ports": ["80", "70000"]}}]}]}),
        ),
    );
    let key = ObjectKey::new(Kind::AuthorizationPolicy, "shop", "bad");
    let status = index.statuses().get(&key).cloned().expect("status");
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.conditions,
        [DesiredCondition::new(
            "Accepted",
            false,
            "Invalid",
            r#"spec.rules[0].to[0].operation.ports[1]: "70000" is not a port (1-65535)"#
        )]
    );
    assert_eq!(index.drain_changes().statuses, [key.clone()].into());
    // Fixed at the next generation.
    apply(
        &mut index,
        ap("bad", 4, json!({"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]})),
    );
    assert_eq!(condition(&index, &key, "Accepted").map(|c| c.status), Some(true));
    assert_eq!(condition(&index, &key, "ZtunnelAccepted").map(|c| c.status), Some(true));
    assert_eq!(index.statuses().get(&key).and_then(|s| s.observed_generation), Some(4));
    // Re-applying the same object changes no status.
    index.drain_changes();
    apply(
        &mut index,
        ap("bad", 4, json!({"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]})),
    );
    assert!(index.drain_changes().statuses.is_empty());
}

#[test]
fn l7_content_on_ztunnel_is_reported() {
    let mut index = index();
    let spec = json!({"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/x"]}}]}]});
    apply(&mut index, ap("http", 1, spec));
    let key = ObjectKey::new(Kind::AuthorizationPolicy, "shop", "http");
    assert_eq!(condition(&index, &key, "Accepted").map(|c| c.status), Some(true));
    let ztunnel = condition(&index, &key, "ZtunnelAccepted").cloned().expect("condition");
    assert!(!ztunnel.status);
    assert_eq!(ztunnel.reason, "UnsupportedValue");
    assert!(
        ztunnel
            .message
            .contains("found: to.operation.methods, to.operation.paths"),
        "{}",
        ztunnel.message
    );
    assert!(ztunnel.message.contains("allows less"), "{}", ztunnel.message);
}

#[test]
fn target_references_resolve_as_targets_come_and_go() {
    let mut index = index();
    let spec = json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}]});
    apply(&mut index, ap("wp-policy", 1, spec));
    let key = ObjectKey::new(Kind::AuthorizationPolicy, "shop", "wp-policy");
    let resolved = |index: &Index| condition(index, &key, "ResolvedRefs").cloned().expect("condition");
    assert_eq!(resolved(&index).reason, "TargetNotFound");
    assert_eq!(resolved(&index).message, "not found: Gateway shop/wp");
    index.drain_changes();
    apply(&mut index, gateway("shop", "wp", "ambit-waypoint", json!({})));
    assert!(resolved(&index).status);
    assert_eq!(index.drain_changes().statuses, [key.clone()].into());
    index.delete(Kind::Gateway, "shop", "wp");
    assert!(!resolved(&index).status);
}

#[test]
fn traffic_policy_and_fault_injection_statuses() {
    let mut index = index();
    let policy: ambit_crds::TrafficPolicy = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "api", "namespace": "shop", "generation": 2},
        "spec": {"targetRef": {"kind": "Service", "name": "api"}, "timeout": "5s"}
    }));
    apply(&mut index, policy);
    let fault: ambit_crds::FaultInjection = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "FaultInjection",
        "metadata": {"name": "slow", "namespace": "shop", "generation": 1},
        "spec": {
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api", "sectionName": "canary"},
            "delay": {"fixedDelay": "1s"}
        }
    }));
    apply(&mut index, fault);
    let tp = ObjectKey::new(Kind::TrafficPolicy, "shop", "api");
    let fi = ObjectKey::new(Kind::FaultInjection, "shop", "slow");
    assert!(index.traffic_policies().contains_key("shop/api"));
    assert!(index.fault_injections().contains_key("shop/slow"));
    assert_eq!(condition(&index, &tp, "ResolvedRefs").map(|c| c.status), Some(false));
    assert_eq!(condition(&index, &fi, "ResolvedRefs").map(|c| c.status), Some(false));
    index.drain_changes();

    apply(
        &mut index,
        service("shop", "api", json!({"app": "api"}), json!([{"port": 80}])),
    );
    assert_eq!(condition(&index, &tp, "ResolvedRefs").map(|c| c.status), Some(true));
    assert_eq!(index.drain_changes().statuses, [tp.clone()].into());

    // The route exists but has no rule named `canary` yet.
    let route = |rule: &str| -> ambit_crds::gateway_api::HttpRoute {
        from_json(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}], "rules": [{"name": rule}]}
        }))
    };
    apply(&mut index, route("main"));
    assert_eq!(condition(&index, &fi, "ResolvedRefs").map(|c| c.status), Some(false));
    apply(&mut index, route("canary"));
    assert_eq!(condition(&index, &fi, "ResolvedRefs").map(|c| c.status), Some(true));
    assert!(index.http_routes().contains_key("shop/api"));

    // Invalid: Accepted False, no ResolvedRefs, and out of the output.
    let invalid: ambit_crds::FaultInjection = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "FaultInjection",
        "metadata": {"name": "slow", "namespace": "shop", "generation": 2},
        "spec": {"targetRef": {"kind": "Service", "name": "api"}}
    }));
    apply(&mut index, invalid);
    let status = index.statuses().get(&fi).cloned().expect("status");
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(
        status.conditions[0].message,
        "spec: a fault injection needs delay or abort"
    );
    assert!(!index.fault_injections().contains_key("shop/slow"));
}

#[test]
fn peer_authentication_status() {
    let mut index = index();
    let policy: ambit_crds::PeerAuthentication = from_json(json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "ports", "namespace": "shop", "generation": 1},
        "spec": {"portLevelMtls": {"80": {"mode": "STRICT"}}}
    }));
    apply(&mut index, policy);
    let key = ObjectKey::new(Kind::PeerAuthentication, "shop", "ports");
    let accepted = condition(&index, &key, "Accepted").cloned().expect("condition");
    assert!(!accepted.status);
    assert!(
        accepted
            .message
            .starts_with("spec.portLevelMtls: portLevelMtls needs a selector")
    );
    assert!(index.peer_authentications().is_empty());
}

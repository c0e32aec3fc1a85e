use ambit_model::{Waypoint, WaypointAddress};
use serde_json::json;

use super::*;
use crate::Kind;

fn waypoint(namespace: &str, name: &str) -> Option<Waypoint> {
    Some(Waypoint {
        address: WaypointAddress::Hostname {
            namespace: namespace.to_owned(),
            hostname: format!("{name}.{namespace}.svc.cluster.local"),
        },
        hbone_port: 15008,
    })
}

fn workload_waypoint(index: &Index, key: &str) -> Option<Waypoint> {
    index.workloads().get(key).and_then(|w| w.waypoint.clone())
}

fn service_waypoint(index: &Index, key: &str) -> Option<Waypoint> {
    index.services().get(key).and_then(|s| s.waypoint.clone())
}

#[test]
fn namespace_label_binds_workloads_and_services() {
    let mut index = index();
    apply(
        &mut index,
        namespace(
            "shop",
            json!({"ambit.dev/dataplane-mode": "ambient", "ambit.dev/use-waypoint": "wp"}),
        ),
    );
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    apply(
        &mut index,
        service("shop", "api", json!({"app": "api"}), json!([{"port": 80}])),
    );
    // The gateway does not exist yet: no waypoint.
    assert_eq!(workload_waypoint(&index, "shop/a"), None);
    index.drain_changes();
    apply(&mut index, gateway("shop", "wp", "ambit-waypoint", json!({})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/a"]));
    assert_eq!(changes.services.upserted, set(&["shop/api"]));
    assert_eq!(workload_waypoint(&index, "shop/a"), waypoint("shop", "wp"));
    assert_eq!(service_waypoint(&index, "shop/api"), waypoint("shop", "wp"));
    index.delete(Kind::Gateway, "shop", "wp");
    assert_eq!(workload_waypoint(&index, "shop/a"), None);
    assert_eq!(service_waypoint(&index, "shop/api"), None);
}

#[test]
fn only_waypoint_class_gateways_are_waypoints() {
    let mut index = index();
    apply(
        &mut index,
        namespace("shop", json!({"ambit.dev/use-waypoint": "ingress"})),
    );
    apply(&mut index, gateway("shop", "ingress", "istio", json!({})));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    assert_eq!(workload_waypoint(&index, "shop/a"), None);
    index.drain_changes();
    // Another class's gateway changing touches no workload.
    apply(&mut index, gateway("shop", "ingress", "istio", json!({"x": "y"})));
    assert!(index.drain_changes().workloads.is_empty());
}

#[test]
fn own_labels_override_the_namespace() {
    let mut index = index();
    apply(&mut index, namespace("shop", json!({"ambit.dev/use-waypoint": "wp"})));
    apply(&mut index, gateway("shop", "wp", "ambit-waypoint", json!({})));
    apply(&mut index, gateway("shop", "special", "ambit-waypoint", json!({})));
    apply(
        &mut index,
        pod("shop", "out", "10.0.0.1", json!({"ambit.dev/use-waypoint": "none"})),
    );
    apply(
        &mut index,
        pod("shop", "own", "10.0.0.2", json!({"ambit.dev/use-waypoint": "special"})),
    );
    apply(
        &mut index,
        pod(
            "shop",
            "wp-pod",
            "10.0.0.3",
            json!({"gateway.networking.k8s.io/gateway-name": "wp"}),
        ),
    );
    let mut opted_out = serde_json::to_value(service("shop", "api", json!({}), json!([{"port": 80}]))).expect("json");
    opted_out["metadata"]["labels"] = json!({"ambit.dev/use-waypoint": "none"});
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Service>(opted_out));
    let mut own = serde_json::to_value(service("shop", "web", json!({}), json!([{"port": 80}]))).expect("json");
    own["metadata"]["labels"] = json!({"ambit.dev/use-waypoint": "special"});
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Service>(own));

    assert_eq!(workload_waypoint(&index, "shop/out"), None);
    assert_eq!(workload_waypoint(&index, "shop/own"), waypoint("shop", "special"));
    assert_eq!(workload_waypoint(&index, "shop/wp-pod"), None);
    assert_eq!(service_waypoint(&index, "shop/api"), None);
    assert_eq!(service_waypoint(&index, "shop/web"), waypoint("shop", "special"));
}

#[test]
fn service_account_annotation_binds_its_workloads() {
    let mut index = index();
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    apply(&mut index, pod("shop", "b", "10.0.0.2", json!({})));
    index.drain_changes();
    apply(
        &mut index,
        gateway(
            "shop",
            "wp-a",
            "ambit-waypoint",
            json!({"ambit.dev/for-service-account": "sa-a"}),
        ),
    );
    assert_eq!(workload_waypoint(&index, "shop/a"), waypoint("shop", "wp-a"));
    assert_eq!(workload_waypoint(&index, "shop/b"), None);
    assert_eq!(index.drain_changes().workloads.upserted, set(&["shop/a"]));
    // Moving the annotation moves the binding.
    apply(
        &mut index,
        gateway(
            "shop",
            "wp-a",
            "ambit-waypoint",
            json!({"ambit.dev/for-service-account": "sa-b"}),
        ),
    );
    assert_eq!(workload_waypoint(&index, "shop/a"), None);
    assert_eq!(workload_waypoint(&index, "shop/b"), waypoint("shop", "wp-a"));
}

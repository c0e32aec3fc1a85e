use ambit_model::ServicePort;
use serde_json::json;

use super::*;
use crate::Kind;

fn services(index: &Index, key: &str) -> std::collections::BTreeMap<String, Vec<ServicePort>> {
    index
        .workloads()
        .get(key)
        .map(|w| w.services.clone())
        .unwrap_or_default()
}

fn port(port: u16, target_port: u16) -> ServicePort {
    ServicePort { port, target_port }
}

#[test]
fn service_fields() {
    let mut index = index();
    let mut value = serde_json::to_value(service(
        "shop",
        "api",
        json!({"app": "api"}),
        json!([
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "grpc", "port": 9090, "targetPort": 9091},
            {"name": "plain", "port": 7070},
            {"name": "dns", "port": 53, "protocol": "UDP"}
        ]),
    ))
    .expect("serializes");
    value["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:96::10"]);
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Service>(value));
    let api = index.services().get("shop/api").cloned().expect("service");
    assert_eq!(api.hostname, "api.shop.svc.cluster.local");
    assert_eq!(
        api.vips,
        vec![
            "10.96.0.10".parse::<std::net::IpAddr>().expect("ip"),
            "fd00:96::10".parse().expect("ip")
        ]
    );
    assert_eq!(api.ports, vec![port(80, 0), port(9090, 9091), port(7070, 7070)]);
    assert!(api.selector.is_empty());
    assert_eq!(api.waypoint, None);
}

#[test]
fn headless_and_external_name_services() {
    let mut index = index();
    let mut headless =
        serde_json::to_value(service("shop", "db", json!({"app": "db"}), json!([{"port": 5432}]))).expect("serializes");
    headless["spec"]["clusterIP"] = json!("None");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Service>(headless));
    let external: k8s_openapi::api::core::v1::Service = from_json(json!({
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}
    }));
    apply(&mut index, external);
    assert_eq!(index.services().get("shop/db").map(|s| s.vips.len()), Some(0));
    assert!(!index.services().contains_key("shop/ext"));
}

#[test]
fn selector_membership_with_named_ports() {
    let mut index = index();
    let ports = json!([{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": "admin"}]);
    apply(&mut index, service("shop", "api", json!({"app": "api"}), ports));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({"app": "api"})));
    apply(&mut index, pod("shop", "b", "10.0.0.2", json!({"app": "web"})));
    apply(&mut index, pod("other", "c", "10.0.0.3", json!({"app": "api"})));
    let a = services(&index, "shop/a");
    // `admin` is no container port of the pod: that port is left out.
    assert_eq!(a.get("shop/api.shop.svc.cluster.local"), Some(&vec![port(80, 8080)]));
    assert!(services(&index, "shop/b").is_empty());
    assert!(services(&index, "other/c").is_empty());
    let endpoints: Vec<_> = index.endpoints("shop/api").map(|w| w.key()).collect();
    assert_eq!(endpoints, ["shop/a"]);
    index.drain_changes();

    // Labels change: a leaves, b joins.
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({"app": "web"})));
    apply(&mut index, pod("shop", "b", "10.0.0.2", json!({"app": "api"})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/a", "shop/b"]));
    assert_eq!(changes.endpoints, set(&["shop/api"]));
    assert!(changes.services.is_empty());
    assert!(services(&index, "shop/a").is_empty());
    assert_eq!(
        index.endpoints("shop/api").map(|w| w.key()).collect::<Vec<_>>(),
        ["shop/b"]
    );

    // The selector changes: membership follows.
    apply(
        &mut index,
        service("shop", "api", json!({"app": "web"}), json!([{"port": 80}])),
    );
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/a", "shop/b"]));
    assert_eq!(changes.services.upserted, set(&["shop/api"]));
    assert_eq!(
        services(&index, "shop/a").get("shop/api.shop.svc.cluster.local"),
        Some(&vec![port(80, 80)])
    );

    // The service goes away: so does the membership.
    index.delete(Kind::Service, "shop", "api");
    let changes = index.drain_changes();
    assert_eq!(changes.services.removed, set(&["shop/api"]));
    assert_eq!(changes.workloads.upserted, set(&["shop/a"]));
    assert!(services(&index, "shop/a").is_empty());
}

#[test]
fn empty_selector_selects_nothing() {
    let mut index = index();
    apply(&mut index, service("shop", "manual", json!({}), json!([{"port": 80}])));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({"app": "api"})));
    assert!(index.workloads().get("shop/a").is_some_and(|w| w.services.is_empty()));
}

#[test]
fn endpoint_slices_take_over_from_the_selector() {
    let mut index = index();
    apply(
        &mut index,
        service(
            "shop",
            "api",
            json!({"app": "api"}),
            json!([{"port": 80, "targetPort": 8080}]),
        ),
    );
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({"app": "api"})));
    apply(&mut index, pod("shop", "b", "10.0.0.2", json!({"app": "api"})));
    apply(&mut index, pod("shop", "c", "10.0.0.3", json!({"app": "web"})));
    let endpoints = |index: &Index| index.endpoints("shop/api").map(|w| w.key()).collect::<Vec<_>>();
    assert_eq!(endpoints(&index), ["shop/a", "shop/b"]);
    index.drain_changes();

    // Once a slice exists, only its ready endpoints count (c is in, b is not ready).
    apply(
        &mut index,
        slice("shop", "api-x1", "api", &[("a", true), ("b", false), ("c", true)]),
    );
    assert_eq!(endpoints(&index), ["shop/a", "shop/c"]);
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/b", "shop/c"]));
    assert_eq!(changes.endpoints, set(&["shop/api"]));

    // A second slice adds b; the first one going leaves b only.
    apply(&mut index, slice("shop", "api-x2", "api", &[("b", true)]));
    assert_eq!(endpoints(&index), ["shop/a", "shop/b", "shop/c"]);
    index.delete(Kind::EndpointSlice, "shop", "api-x1");
    assert_eq!(endpoints(&index), ["shop/b"]);

    // No slice left: back to the selector.
    index.delete(Kind::EndpointSlice, "shop", "api-x2");
    assert_eq!(endpoints(&index), ["shop/a", "shop/b"]);
}

#[test]
fn slice_before_service_and_pod() {
    let mut index = index();
    apply(&mut index, slice("shop", "api-x1", "api", &[("a", true)]));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    assert!(index.workloads().get("shop/a").is_some_and(|w| w.services.is_empty()));
    apply(
        &mut index,
        service("shop", "api", json!({"app": "api"}), json!([{"port": 80}])),
    );
    let services = index
        .workloads()
        .get("shop/a")
        .map(|w| w.services.clone())
        .unwrap_or_default();
    assert_eq!(
        services.get("shop/api.shop.svc.cluster.local"),
        Some(&vec![port(80, 80)])
    );
}

//! Plain synchronous tests: apply objects, check the outputs and the reported changes.
//! Objects are written as JSON, as the API server would send them.

mod policies;
mod services;
mod status;
mod waypoints;
mod workloads;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Config, Index, Object};

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object is well formed")
}

fn index() -> Index {
    Index::new(Config::default())
}

fn apply(index: &mut Index, object: impl Into<Object>) {
    index.apply(object).expect("test object has a name");
}

fn namespace(name: &str, labels: Value) -> k8s_openapi::api::core::v1::Namespace {
    from_json(json!({"metadata": {"name": name, "labels": labels}}))
}

fn meshed_namespace(name: &str) -> k8s_openapi::api::core::v1::Namespace {
    namespace(name, json!({"ambit.dev/dataplane-mode": "ambient"}))
}

/// A running pod on `node-a` with one IP and a container port `http` = 8080.
fn pod_json(namespace: &str, name: &str, ip: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": format!("sa-{name}"),
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn pod(namespace: &str, name: &str, ip: &str, labels: Value) -> k8s_openapi::api::core::v1::Pod {
    from_json(pod_json(namespace, name, ip, labels))
}

fn service(namespace: &str, name: &str, selector: Value, ports: Value) -> k8s_openapi::api::core::v1::Service {
    from_json(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": selector, "ports": ports}
    }))
}

/// An EndpointSlice of `service` with one endpoint per `(pod, ready)`.
fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    endpoints: &[(&str, bool)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ready)| {
            json!({
                "addresses": ["10.0.0.1"],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}
            })
        })
        .collect();
    from_json(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints
    }))
}

fn gateway(namespace: &str, name: &str, class: &str, annotations: Value) -> ambit_crds::gateway_api::Gateway {
    from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    }))
}

fn set(keys: &[&str]) -> std::collections::BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

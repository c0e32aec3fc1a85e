use std::net::IpAddr;

use ambit_model::Protocol;
use serde_json::json;

use super::*;
use crate::Kind;

#[test]
fn enrollment_sets_the_protocol() {
    let mut index = index();
    apply(&mut index, meshed_namespace("shop"));
    apply(&mut index, namespace("plain", json!({})));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    apply(
        &mut index,
        pod(
            "shop",
            "opted-out",
            "10.0.0.2",
            json!({"ambit.dev/dataplane-mode": "none"}),
        ),
    );
    apply(&mut index, pod("plain", "b", "10.0.0.3", json!({})));
    apply(&mut index, pod("nowhere", "c", "10.0.0.4", json!({})));
    let protocol = |key: &str| index.workloads().get(key).map(|w| w.protocol);
    assert_eq!(protocol("shop/a"), Some(Protocol::Hbone));
    assert_eq!(protocol("shop/opted-out"), Some(Protocol::Tcp));
    assert_eq!(protocol("plain/b"), Some(Protocol::Tcp));
    assert_eq!(protocol("nowhere/c"), Some(Protocol::Tcp));
}

#[test]
fn pods_without_ip_finished_or_on_the_host_network_are_not_workloads() {
    let mut index = index();
    apply(&mut index, meshed_namespace("shop"));
    let mut pending = pod_json("shop", "pending", "10.0.0.1", json!({}));
    pending["status"] = json!({"phase": "Pending"});
    let mut done = pod_json("shop", "done", "10.0.0.2", json!({}));
    done["status"]["phase"] = json!("Succeeded");
    let mut failed = pod_json("shop", "failed", "10.0.0.3", json!({}));
    failed["status"]["phase"] = json!("Failed");
    let mut host = pod_json("shop", "host", "192.168.1.5", json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    for pod in [pending, done, failed, host] {
        apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(pod));
    }
    assert!(index.workloads().is_empty());
    // The pending pod gets its IP: now it is one.
    apply(&mut index, pod("shop", "pending", "10.0.0.1", json!({})));
    assert_eq!(index.workloads().keys().collect::<Vec<_>>(), ["shop/pending"]);
}

#[test]
fn workload_fields() {
    let mut index = Index::new(Config {
        trust_domain: "example.org".into(),
        ..Config::default()
    });
    apply(&mut index, meshed_namespace("shop"));
    let mut value = pod_json(
        "shop",
        "api-7d4b9c-x2x9z",
        "10.0.0.1",
        json!({"app": "api", "pod-template-hash": "7d4b9c"}),
    );
    value["status"]["podIPs"] = json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]);
    value["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9c", "uid": "rs", "controller": true}]);
    value["spec"]["serviceAccountName"] = json!(null);
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(value));
    let workload = index
        .workloads()
        .get("shop/api-7d4b9c-x2x9z")
        .cloned()
        .expect("workload");
    let expected: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("ip"), "fd00::1".parse().expect("ip")];
    assert_eq!(workload.addresses, expected);
    assert_eq!(workload.node, "node-a");
    assert_eq!(workload.service_account, "default");
    assert_eq!(workload.workload_name, "api");
    assert_eq!(workload.trust_domain, "example.org");
    assert_eq!(workload.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(workload.netns, None);
    assert_eq!(workload.spiffe_id(), "spiffe://example.org/ns/shop/sa/default");
}

#[test]
fn workload_names_follow_the_owner() {
    let mut index = index();
    let mut job = pod_json("batch", "report-28000000-abcde", "10.0.0.1", json!({}));
    job["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "report-28000000", "uid": "j", "controller": true}]);
    let mut set = pod_json("batch", "db-0", "10.0.0.2", json!({}));
    set["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s", "controller": true}]);
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(job));
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(set));
    apply(&mut index, pod("batch", "bare", "10.0.0.3", json!({})));
    let name = |key: &str| index.workloads().get(key).map(|w| w.workload_name.clone());
    assert_eq!(name("batch/report-28000000-abcde").as_deref(), Some("report"));
    assert_eq!(name("batch/db-0").as_deref(), Some("db"));
    assert_eq!(name("batch/bare").as_deref(), Some("bare"));
}

#[test]
fn namespace_enrollment_changes_update_every_pod() {
    let mut index = index();
    apply(&mut index, meshed_namespace("shop"));
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    apply(&mut index, pod("shop", "b", "10.0.0.2", json!({})));
    apply(&mut index, pod("other", "c", "10.0.0.3", json!({})));
    index.drain_changes();
    apply(&mut index, namespace("shop", json!({"team": "x"})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/a", "shop/b"]));
    assert!(index.workloads().values().all(|w| w.protocol == Protocol::Tcp));
    // A label the index does not read changes nothing.
    apply(&mut index, namespace("shop", json!({"team": "y"})));
    assert!(index.drain_changes().is_empty());
    apply(&mut index, meshed_namespace("shop"));
    assert_eq!(index.drain_changes().workloads.upserted, set(&["shop/a", "shop/b"]));
    index.delete(Kind::Namespace, "", "shop");
    assert_eq!(index.drain_changes().workloads.upserted, set(&["shop/a", "shop/b"]));
    assert_eq!(index.workloads().get("shop/a").map(|w| w.protocol), Some(Protocol::Tcp));
}

#[test]
fn pod_ip_change_and_deletion() {
    let mut index = index();
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    index.drain_changes();
    apply(&mut index, pod("shop", "a", "10.0.0.9", json!({})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["shop/a"]));
    let address = index.workloads().get("shop/a").map(|w| w.addresses.clone());
    assert_eq!(address, Some(vec!["10.0.0.9".parse().expect("ip")]));
    // Re-applying the same pod reports nothing and keeps the same Arc.
    let before = index.workloads().get("shop/a").cloned().expect("workload");
    apply(&mut index, pod("shop", "a", "10.0.0.9", json!({})));
    assert!(index.drain_changes().is_empty());
    assert!(std::sync::Arc::ptr_eq(
        &before,
        index.workloads().get("shop/a").expect("workload")
    ));
    index.delete(Kind::Pod, "shop", "a");
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.removed, set(&["shop/a"]));
    assert!(index.workloads().is_empty());
    index.delete(Kind::Pod, "shop", "a");
    assert!(index.drain_changes().is_empty());
}

#[test]
fn pod_lookups_and_node_identities() {
    let mut index = index();
    apply(&mut index, pod("shop", "a", "10.0.0.1", json!({})));
    let mut pending = pod_json("shop", "b", "10.0.0.2", json!({}));
    pending["status"] = json!({"phase": "Pending"});
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(pending));
    let mut done = pod_json("shop", "done", "10.0.0.3", json!({}));
    done["status"]["phase"] = json!("Succeeded");
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(done));
    let mut elsewhere = pod_json("shop", "c", "10.0.0.4", json!({}));
    elsewhere["spec"]["nodeName"] = json!("node-b");
    apply(&mut index, from_json::<k8s_openapi::api::core::v1::Pod>(elsewhere));

    assert!(index.pod("shop", "a").is_some());
    assert_eq!(
        index
            .pod_by_uid("uid-c")
            .and_then(|p| p.metadata.name.clone())
            .as_deref(),
        Some("c")
    );
    let identities = index.identities_on_node("node-a");
    let expected = [("shop", "sa-a"), ("shop", "sa-b")].map(|(n, s)| (n.to_owned(), s.to_owned()));
    assert_eq!(identities, expected.into_iter().collect());
    assert!(index.may_node_request("node-a", "shop", "sa-b"));
    assert!(!index.may_node_request("node-a", "shop", "sa-c"));
    assert!(!index.may_node_request("node-a", "shop", "sa-done"));
    assert!(index.may_node_request("node-b", "shop", "sa-c"));
    // A pod moved between nodes (a new pod of the same name) moves its identity.
    index.delete(Kind::Pod, "shop", "c");
    assert!(!index.may_node_request("node-b", "shop", "sa-c"));
    assert!(index.pod_by_uid("uid-c").is_none());
}

#[test]
fn objects_without_a_name_are_refused() {
    let mut index = index();
    let nameless: k8s_openapi::api::core::v1::Pod = from_json(json!({"metadata": {"namespace": "shop"}}));
    let error = index.apply(nameless).err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("Pod without metadata.name cannot be indexed; check the object's source")
    );
}

#[test]
fn one_pod_change_in_ten_thousand_reports_only_that_pod() {
    let mut index = index();
    apply(&mut index, meshed_namespace("big"));
    apply(
        &mut index,
        service(
            "big",
            "web",
            json!({"app": "web"}),
            json!([{"port": 80, "targetPort": "http"}]),
        ),
    );
    for n in 0..10_000_u32 {
        let ip = format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256);
        apply(&mut index, pod("big", &format!("web-{n}"), &ip, json!({"app": "web"})));
    }
    assert_eq!(index.workloads().len(), 10_000);
    assert_eq!(index.endpoints("big/web").count(), 10_000);
    index.drain_changes();
    apply(&mut index, pod("big", "web-42", "10.200.0.1", json!({"app": "web"})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["big/web-42"]));
    assert!(changes.services.is_empty() && changes.endpoints.is_empty());
    apply(&mut index, pod("big", "web-42", "10.200.0.1", json!({"app": "other"})));
    let changes = index.drain_changes();
    assert_eq!(changes.workloads.upserted, set(&["big/web-42"]));
    assert_eq!(changes.endpoints, set(&["big/web"]));
}

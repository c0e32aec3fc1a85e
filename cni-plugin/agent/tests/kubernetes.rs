//! The agent's Kubernetes source against the in-memory API server (`ambit-kube-emulator`): the
//! reflectors see only this node's pods, follow namespace and pod label changes, and a pod's ADD
//! reads the pod fresh even before the watch has delivered it.

use std::time::Duration;

use ambit_cni_agent::{
    config::Source,
    enrollment::{Cluster, DATAPLANE_MODE, Decision},
    source::ClusterSource,
};
use ambit_kube_emulator::{Emulator, EmulatorConfig};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Client,
    api::{Api, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(20);

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("object");
    api.create(&PostParams::default(), &object).await.expect("created");
}

fn pod(name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "app", "image": "x"}]}
    })
}

async fn wait_for(source: &ClusterSource, what: &str, check: impl Fn(&Cluster) -> bool) {
    let mut rx = source.subscribe();
    tokio::time::timeout(GUARD, rx.wait_for(|c| check(c)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}; view: {:?}", source.current()))
        .expect("source alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_source_follows_labels_of_this_nodes_pods() {
    let emulator = Emulator::start(EmulatorConfig::default()).expect("emulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let client = Client::try_from(kube::Config::new(emulator.uri())).expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    create(
        &namespaces,
        json!({"metadata": {"name": "shop", "labels": {DATAPLANE_MODE: "ambient"}}}),
    )
    .await;
    create(&pods, pod("web", "node1", json!({"app": "web"}))).await;
    create(&pods, pod("out", "node1", json!({DATAPLANE_MODE: "none"}))).await;
    create(&pods, pod("elsewhere", "node2", json!({}))).await;

    let stop = CancellationToken::new();
    let (source, mut synced) = ClusterSource::start(
        &Source::Kubernetes {
            kubeconfig: Some(kubeconfig),
        },
        "node1",
        stop.clone(),
    )
    .await
    .expect("source starts");
    tokio::time::timeout(GUARD, synced.wait_for(|s| *s))
        .await
        .expect("synced in time")
        .expect("source alive");
    wait_for(&source, "both node1 pods are seen", |c| c.pods.len() == 2).await;
    let view = source.current();
    assert!(
        !view.pods.contains_key("shop/elsewhere"),
        "another node's pod: {view:?}"
    );
    match view.decide("shop", "web") {
        Decision::Enroll(info) => assert_eq!(info.service_account, "web"),
        other => panic!("web should be enrolled: {other:?}"),
    }
    assert_eq!(view.decide("shop", "out"), Decision::Skip("opted out by pod label"));

    // Unlabelling the namespace reaches the view through the watch.
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {DATAPLANE_MODE: null}}})),
        )
        .await
        .expect("unlabel");
    wait_for(&source, "the namespace is no longer enrolled", |c| {
        c.decide("shop", "web") == Decision::Skip("namespace not enrolled")
    })
    .await;

    // A pod's ADD reads the API directly: a pod the watch has not delivered yet is known.
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {DATAPLANE_MODE: "ambient"}}})),
        )
        .await
        .expect("label");
    create(&pods, pod("fresh", "node1", json!({}))).await;
    let fresh = source.fresh("shop", "fresh").await.expect("fresh read");
    assert!(
        matches!(fresh.decide("shop", "fresh"), Decision::Enroll(_)),
        "{fresh:?}"
    );
    assert_eq!(
        source
            .fresh("shop", "missing")
            .await
            .expect("fresh read")
            .decide("shop", "missing"),
        Decision::Unknown,
        "an enrolled namespace's unknown pod is neither enrolled nor let through"
    );
    stop.cancel();
}

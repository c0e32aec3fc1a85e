//! kube-rs against the emulator: CRUD, optimistic concurrency, the patch flavours, server-side
//! apply, status subresources, selectors and pagination, finalizers and cascades, CRDs.

use ambit_kube_emulator::{Emulator, EmulatorConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

fn start() -> (Emulator, Client) {
    let emulator = Emulator::start(EmulatorConfig::default()).expect("emulator starts");
    let client = Client::try_from(kube::Config::new(emulator.uri())).expect("client builds");
    (emulator, client)
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).expect("valid")
}

async fn namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("valid");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

#[tokio::test]
async fn crud_with_conflicts_and_proper_statuses() {
    let (_emulator, client) = start();
    namespace(&client, "apps").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "apps");
    let created = maps
        .create(&PostParams::default(), &config_map("one", json!({})))
        .await
        .expect("created");
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    let first_rv = created.resource_version().expect("rv");

    let duplicate = api_error(maps.create(&PostParams::default(), &config_map("one", json!({}))).await);
    assert_eq!((duplicate.code, duplicate.reason.as_str()), (409, "AlreadyExists"));
    let missing = api_error(maps.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"nope\" not found");

    let mut changed = created.clone();
    changed.data = Some([("k".to_owned(), "v2".to_owned())].into());
    let replaced = maps
        .replace("one", &PostParams::default(), &changed)
        .await
        .expect("replaced");
    assert_ne!(replaced.resource_version().expect("rv"), first_rv);
    let stale = api_error(maps.replace("one", &PostParams::default(), &changed).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    let generated: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).expect("valid");
    let generated = maps
        .create(&PostParams::default(), &generated)
        .await
        .expect("generated");
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);

    let orphan: Api<ConfigMap> = Api::namespaced(client.clone(), "ghost");
    let no_namespace = api_error(orphan.create(&PostParams::default(), &config_map("x", json!({}))).await);
    assert_eq!(
        (no_namespace.code, no_namespace.message.as_str()),
        (404, "namespaces \"ghost\" not found")
    );
    let invalid = api_error(
        maps.create(&PostParams::default(), &config_map("Bad_Name", json!({})))
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));

    let deleted = maps.delete("one", &DeleteParams::default()).await.expect("deleted");
    assert!(deleted.is_right(), "config maps answer deletes with a Status");
    assert_eq!(api_error(maps.get("one").await).code, 404);
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let (_emulator, client) = start();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}},
        "status": {"replicas": 7}
    }))
    .expect("valid");
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("created");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status is dropped on create for types with a status subresource"
    );

    let merged = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.labels().get("tier").map(String::as_str), Some("front"));
    assert_eq!(
        merged.metadata.generation,
        Some(1),
        "metadata-only change keeps the generation"
    );

    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 3}])).expect("valid");
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(json_patch))
        .await
        .expect("json");
    assert_eq!(patched.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(patched.metadata.generation, Some(2), "spec change bumps the generation");

    let strategic = json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}});
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(strategic))
        .await
        .expect("strategic");
    let containers = patched.spec.expect("spec").template.spec.expect("pod spec").containers;
    let images: Vec<_> = containers.iter().map(|c| c.image.clone().unwrap_or_default()).collect();
    assert_eq!(images, vec!["a:1", "b:2"], "containers merge by name");

    let status = json!({"status": {"replicas": 3, "readyReplicas": 2}});
    let with_status = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    assert_eq!(with_status.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
    assert_eq!(
        with_status.metadata.generation,
        Some(3),
        "status writes keep the generation"
    );
    let ignored = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 9}})),
        )
        .await
        .expect("main resource patch");
    assert_eq!(
        ignored.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "main resource ignores status"
    );

    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 5}});
    let conflict = api_error(
        deployments
            .patch("web", &PatchParams::default(), &Patch::Merge(stale))
            .await,
    );
    assert_eq!(conflict.code, 409);
    let bad = api_error(
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Json::<()>(
                    serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 99}]))
                        .expect("valid"),
                ),
            )
            .await,
    );
    assert_eq!(bad.code, 422);
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_forgets_dropped_fields() {
    let (_emulator, client) = start();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let params = PatchParams::apply("ambit-test");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "1"}},
        "data": {"x": "1", "y": "2"}});
    let created = maps
        .patch("cfg", &params, &Patch::Apply(&first))
        .await
        .expect("apply creates");
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2));
    maps.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"other": "kept"}})),
    )
    .await
    .expect("merge");
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"x": "9"}});
    let applied = maps
        .patch("cfg", &params, &Patch::Apply(&second))
        .await
        .expect("apply updates");
    let data = applied.data.expect("data");
    assert_eq!(data.get("x").map(String::as_str), Some("9"));
    assert!(
        !data.contains_key("y"),
        "a field the manager stopped applying is removed"
    );
    assert_eq!(
        data.get("other").map(String::as_str),
        Some("kept"),
        "other writers' fields stay"
    );
    assert!(applied.metadata.labels.unwrap_or_default().is_empty());

    let no_manager = api_error(maps.patch("cfg", &PatchParams::default(), &Patch::Apply(&second)).await);
    assert_eq!(no_manager.code, 400);
}

#[tokio::test]
async fn selectors_and_pagination() {
    let (_emulator, client) = start();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "web", "tier": "back"})),
        ("c", json!({"app": "db"})),
        ("d", json!({})),
    ] {
        maps.create(&PostParams::default(), &config_map(name, labels))
            .await
            .expect("created");
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    for (selector, expected) in [
        ("app=web", vec!["a", "b"]),
        ("app==db", vec!["c"]),
        ("app!=web", vec!["c", "d"]),
        ("tier in (front,back)", vec!["a", "b"]),
        ("app notin (web)", vec!["c", "d"]),
        ("tier", vec!["a", "b"]),
        ("!tier", vec!["c", "d"]),
    ] {
        let list = maps.list(&ListParams::default().labels(selector)).await.expect("list");
        assert_eq!(names(list), expected, "{selector}");
    }
    let by_name = maps
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("list");
    assert_eq!(names(by_name), vec!["c"]);
    let unsupported = api_error(maps.list(&ListParams::default().fields("spec.nodeName=x")).await);
    assert_eq!(unsupported.code, 400);

    let first = maps.list(&ListParams::default().limit(3)).await.expect("page 1");
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    assert!(first.metadata.resource_version.is_some());
    let second = maps
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(names(first), vec!["a", "b", "c"]);
    assert_eq!(names(second.clone()), vec!["d"]);
    assert!(second.metadata.continue_.is_none());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("p1", "n1"), ("p2", "n2")] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .expect("valid");
        pods.create(&PostParams::default(), &pod).await.expect("pod");
    }
    let on_n2 = Api::<Pod>::all(client)
        .list(&ListParams::default().fields("spec.nodeName=n2"))
        .await
        .expect("list");
    assert_eq!(on_n2.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), vec!["p2"]);
}

#[tokio::test]
async fn finalizers_namespace_deletion_and_owner_cascade() {
    let (_emulator, client) = start();
    namespace(&client, "doomed").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let owner = maps
        .create(&PostParams::default(), &config_map("owner", json!({})))
        .await
        .expect("owner");
    let dependent: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid")}]}}))
    .expect("valid");
    maps.create(&PostParams::default(), &dependent)
        .await
        .expect("dependent");
    let held: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["ambit.dev/x"]}})).expect("valid");
    maps.create(&PostParams::default(), &held).await.expect("held");

    maps.delete("owner", &DeleteParams::default())
        .await
        .expect("owner deleted");
    assert_eq!(
        api_error(maps.get("dependent").await).code,
        404,
        "dependent garbage-collected"
    );

    let pending = maps
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let pending = pending.left().expect("object returned while finalizers hold it");
    assert!(pending.metadata.deletion_timestamp.is_some());
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("finalizer removed");
    assert_eq!(
        api_error(maps.get("held").await).code,
        404,
        "gone once finalizers are cleared"
    );

    maps.create(&PostParams::default(), &config_map("content", json!({})))
        .await
        .expect("content");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deleted = namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("namespace deleted");
    assert!(deleted.is_left(), "namespaces answer deletes with the object");
    assert_eq!(api_error(namespaces.get("doomed").await).code, 404);
    assert_eq!(api_error(maps.get("content").await).code, 404);
    assert!(
        Api::<ConfigMap>::all(client)
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

/// A test custom resource.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "test.ambit.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
pub struct WidgetSpec {
    mode: String,
    #[schemars(range(min = 1, max = 5))]
    replicas: i32,
}

/// Status of [`Widget`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct WidgetStatus {
    ready: bool,
}

#[tokio::test]
async fn crd_install_serves_custom_resources_with_status_and_schema() {
    let (_emulator, client) = start();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .create(&PostParams::default(), &Widget::crd())
        .await
        .expect("crd created");
    let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let discovery = kube::Discovery::new(client.clone()).run().await.expect("discovery");
    assert!(discovery.groups().any(|g| g.name() == "test.ambit.dev"));

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let widget = Widget::new(
        "w",
        WidgetSpec {
            mode: "ambient".to_owned(),
            replicas: 2,
        },
    );
    let created = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("cr created");
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({"apiVersion": "test.ambit.dev/v1", "kind": "Widget", "status": {"ready": true}});
    let with_status = widgets
        .patch_status("w", &PatchParams::apply("ambit-operator"), &Patch::Apply(&status))
        .await
        .expect("status");
    assert!(with_status.status.as_ref().is_some_and(|s| s.ready));
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    assert_eq!(with_status.spec.replicas, 2);

    let respec = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3, "bogus": 1}, "status": null})),
        )
        .await
        .expect("spec patch");
    assert_eq!(respec.metadata.generation, Some(2));
    assert!(
        respec.status.is_some_and(|s| s.ready),
        "main resource cannot clear status"
    );

    let too_many = api_error(
        widgets
            .patch(
                "w",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 9}})),
            )
            .await,
    );
    assert_eq!((too_many.code, too_many.reason.as_str()), (422, "Invalid"));
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let unknown = api_error(
        widgets
            .patch("w", &strict, &Patch::Merge(json!({"spec": {"bogus": 1}})))
            .await,
    );
    assert_eq!(unknown.code, 400);
    let strategic = api_error(
        widgets
            .patch("w", &PatchParams::default(), &Patch::Strategic(json!({})))
            .await,
    );
    assert_eq!(strategic.code, 415);

    let deleted = widgets.delete("w", &DeleteParams::default()).await.expect("deleted");
    assert!(deleted.is_left(), "custom resources answer deletes with the object");
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("recreated");
    crds.delete(&crd_name(), &DeleteParams::default())
        .await
        .expect("crd deleted");
    assert_eq!(api_error(widgets.list(&ListParams::default()).await).code, 404);
}

fn crd_name() -> String {
    Widget::crd().name_any()
}

//! Just enough OpenAPI v3 for kubectl: an index of group versions and, per group version, the
//! PATCH operations tagged with `x-kubernetes-group-version-kind` and a `fieldValidation` query
//! parameter, which is how kubectl decides that the server validates fields itself (so it skips
//! client-side schema validation). No component schemas are published: kubectl then computes
//! strategic merge patches from its compiled-in types and JSON merge patches for custom
//! resources, exactly as against a server whose schema lacks the type. `/openapi/v2` is a 404,
//! which kubectl tolerates.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Reason};
use crate::resources::Registry;

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is, with a content hash in the URL so
/// clients caching by URL see changes (CRDs come and go).
pub(super) fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let Ok(document) = group_version(registry, &group, &version) else {
                continue;
            };
            let mut hasher = DefaultHasher::new();
            document.to_string().hash(&mut hasher);
            let path = group_version_path(&group, &version);
            let url = format!("/openapi/v3/{path}?hash={:016X}", hasher.finish());
            paths.insert(path, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` and `/openapi/v3/apis/<group>/<version>`.
pub(super) fn group_version(registry: &Registry, group: &str, version: &str) -> Result<Value, ApiError> {
    let mut paths = Map::new();
    for def in registry.all().filter(|d| d.group == group && d.serves(version)) {
        let prefix = format!("/{}", group_version_path(group, version));
        let scope = if def.namespaced { "/namespaces/{namespace}" } else { "" };
        let gvk = json!({"group": group, "version": version, "kind": def.kind});
        let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        let operation = |action: &str| {
            json!({
                "operationId": format!("{action}{}", def.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let mut item = json!({"patch": operation("patch"), "put": operation("put"), "get": operation("get"), "delete": operation("delete")});
        item["parameters"] = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
        paths.insert(format!("{prefix}{scope}/{}/{{name}}", def.plural), item);
        paths.insert(
            format!("{prefix}{scope}/{}", def.plural),
            json!({"post": operation("post")}),
        );
    }
    if paths.is_empty() {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("no OpenAPI document for {}", group_version_path(group, version)),
        ));
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

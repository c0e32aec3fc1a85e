//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>` and the `APIResourceList`
//! of each group version. Always the legacy (unaggregated) format: clients asking for aggregated
//! discovery (`as=APIGroupDiscoveryList`) see the `application/json` content type and fall back,
//! as kubectl and client-go do against servers without it.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::error::{ApiError, Reason};
use crate::resources::Registry;

/// The version the emulator claims to be.
pub(super) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-ambit-kube-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(super) fn core_versions(address: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address.to_string()}],
    })
}

fn group_document(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

pub(super) fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, versions)| group_document(&group, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(super) fn group(registry: &Registry, group: &str) -> Result<Value, ApiError> {
    let (name, versions) = registry
        .groups()
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server could not find the requested resource (group {group})"),
            )
        })?;
    let mut document = group_document(&name, &versions);
    document["kind"] = json!("APIGroup");
    document["apiVersion"] = json!("v1");
    Ok(document)
}

pub(super) fn resource_list(registry: &Registry, group: &str, version: &str) -> Result<Value, ApiError> {
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let defs: Vec<_> = registry
        .all()
        .filter(|d| d.group == group && d.serves(version))
        .collect();
    if defs.is_empty() {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("the server could not find the requested resource (group version {group_version})"),
        ));
    }
    let mut resources = Vec::new();
    for def in defs {
        let mut resource = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs(),
        });
        if !def.short_names.is_empty() {
            resource["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            resource["categories"] = json!(def.categories);
        }
        resources.push(resource);
        for sub in def.subresources() {
            let (kind, verbs, extra) = match sub {
                "token" => (
                    "TokenRequest",
                    json!(["create"]),
                    json!({"group": "authentication.k8s.io", "version": "v1"}),
                ),
                _ => (def.kind.as_str(), json!(["get", "patch", "update"]), json!({})),
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
                entry.extend(extra.clone());
            }
            resources.push(entry);
        }
    }
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

//! CustomResourceDefinitions: turning an `apiextensions.k8s.io/v1` CRD into a served
//! [`ResourceDef`], the checks the real server makes before accepting one, and the status it
//! reports once established (immediately, there being no controller delay).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::{Behavior, PrinterColumn, ResourceDef};

/// `(field, message)` pairs for a 422 Invalid.
pub(crate) type Causes = Vec<(String, String)>;

/// Builds the resource a CRD defines, or the reasons the real server would reject it.
pub(crate) fn definition(crd: &Value) -> Result<ResourceDef, Causes> {
    let mut causes = Causes::new();
    let text = |pointer: &str| crd.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_owned();
    let name = text("/metadata/name");
    let group = text("/spec/group");
    let plural = text("/spec/names/plural");
    let kind = text("/spec/names/kind");
    let scope = text("/spec/scope");
    for (field, value) in [
        ("spec.group", &group),
        ("spec.names.plural", &plural),
        ("spec.names.kind", &kind),
    ] {
        if value.is_empty() {
            causes.push((field.to_owned(), "Required value".to_owned()));
        }
    }
    if !group.contains('.') && !group.is_empty() {
        causes.push((
            "spec.group".to_owned(),
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".to_owned(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            causes.push((
                "spec.scope".to_owned(),
                format!("Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""),
            ));
            false
        }
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push((
            "spec.versions".to_owned(),
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        ));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        causes.push((
            "spec.versions".to_owned(),
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        ));
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .collect();
    let version_name = |v: &Value| v.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut served_names: Vec<String> = served.iter().map(|v| version_name(v)).collect();
    // The storage version first, so discovery prefers it.
    let storage_name = storage.first().map(|v| version_name(v)).unwrap_or_default();
    served_names.sort_by_key(|v| *v != storage_name);
    let first = storage
        .first()
        .copied()
        .or(served.first().copied())
        .unwrap_or(&Value::Null);
    let status_subresource = versions.iter().any(|v| v.pointer("/subresources/status").is_some());
    let schemas: BTreeMap<String, Value> = versions
        .iter()
        .filter_map(|v| Some((version_name(v), v.pointer("/schema/openAPIV3Schema")?.clone())))
        .collect();
    let strings = |pointer: &str| -> Vec<String> {
        crd.pointer(pointer)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let singular = Some(text("/spec/names/singular"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    Ok(ResourceDef {
        group,
        versions: served_names,
        plural,
        singular,
        kind,
        namespaced,
        short_names: strings("/spec/names/shortNames"),
        categories: strings("/spec/names/categories"),
        status_subresource,
        has_generation: true,
        returns_deleted_object: true,
        behavior: Behavior::CustomResource,
        printer_columns: printer_columns(first),
        schemas,
    })
}

fn printer_columns(version: &Value) -> Vec<PrinterColumn> {
    let Some(columns) = version.get("additionalPrinterColumns").and_then(Value::as_array) else {
        return Vec::new();
    };
    columns
        .iter()
        .filter_map(|c| {
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            Some(PrinterColumn {
                name: c.get("name")?.as_str()?.to_owned(),
                column_type: text("type"),
                json_path: c.get("jsonPath")?.as_str()?.to_owned(),
                description: text("description"),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            })
        })
        .collect()
}

/// The status of an accepted, established CRD.
pub(crate) fn established_status(crd: &Value, now: &str) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    json!({
        "acceptedNames": names,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1alpha1", "served": true, "storage": false},
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                 "additionalPrinterColumns": [{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}]}
            ]}})
    }

    #[test]
    fn builds_definition_with_storage_version_first() {
        let def = definition(&widget_crd()).expect("valid crd");
        assert_eq!(def.versions, vec!["v1".to_owned(), "v1alpha1".to_owned()]);
        assert!(def.namespaced && def.status_subresource);
        assert_eq!(def.short_names, vec!["wd".to_owned()]);
        assert_eq!(def.printer_columns[0].json_path, ".spec.mode");
    }

    #[test]
    fn rejects_mismatched_name() {
        let mut crd = widget_crd();
        crd["metadata"]["name"] = json!("gadgets.example.com");
        let causes = definition(&crd).expect_err("invalid");
        assert_eq!(causes[0].0, "metadata.name");
    }
}

//! The committed CRD YAML is what the types generate, and every generated schema is structural,
//! so an API server accepts it.

use std::path::Path;

use serde_json::Value;

#[test]
fn committed_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = ambit_crds::crd_files().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files.len(), 4);
    for file in files {
        let committed = std::fs::read_to_string(dir.join(&file.file_name)).unwrap_or_default();
        assert!(
            committed == file.yaml,
            "crds/{} differs from what the Rust types generate; run `cargo run -p ambit-crds --bin crdgen`",
            file.file_name
        );
    }
}

#[test]
fn generation_is_deterministic() {
    let first = ambit_crds::crd_files().unwrap_or_else(|e| panic!("{e}"));
    let second = ambit_crds::crd_files().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, second);
}

#[test]
fn schemas_are_structural() {
    let all = ambit_crds::crds().into_iter().chain(ambit_crds::gateway_api::crds());
    for crd in all {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.versions.len(), 1, "{name}");
        for version in &crd.spec.versions {
            assert!(
                version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{name} has no status subresource"
            );
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(serde_json::to_value)
                .and_then(Result::ok)
                .unwrap_or(Value::Null);
            let mut problems = Vec::new();
            check_structural(&schema, &format!("{name}:"), true, &mut problems);
            assert!(problems.is_empty(), "{}", problems.join("\n"));
        }
    }
}

/// Kubernetes' structural-schema rules that derived schemas can break: every node has a type
/// (or preserves unknown fields / is int-or-string), no `$ref`/`definitions`, and `anyOf`/`oneOf`/
/// `allOf`/`not` only below a typed node and without types, defaults or descriptions of their own.
fn check_structural(node: &Value, path: &str, needs_type: bool, problems: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        problems.push(format!("{path} is not an object"));
        return;
    };
    for forbidden in ["$ref", "definitions", "$defs", "$schema"] {
        if object.contains_key(forbidden) {
            problems.push(format!("{path} has {forbidden}"));
        }
    }
    let typed = object.contains_key("type")
        || object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if needs_type && !typed {
        problems.push(format!("{path} has no type"));
    }
    if let Some(kind) = object.get("type")
        && !kind.is_string()
    {
        problems.push(format!("{path} has type {kind}, not one string"));
    }
    for junctor in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = object.get(junctor).and_then(Value::as_array) {
            for (n, branch) in branches.iter().enumerate() {
                let branch_path = format!("{path}.{junctor}[{n}]");
                for key in ["type", "default", "description", "nullable", "additionalProperties"] {
                    if branch.get(key).is_some() {
                        problems.push(format!("{branch_path} sets {key}, which a value validation may not"));
                    }
                }
            }
        }
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            check_structural(child, &format!("{path}.{key}"), true, problems);
        }
    }
    if let Some(items) = object.get("items") {
        check_structural(items, &format!("{path}[]"), true, problems);
    }
    if let Some(additional) = object.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), true, problems);
        if object.contains_key("properties") {
            problems.push(format!("{path} sets both properties and additionalProperties"));
        }
    }
}

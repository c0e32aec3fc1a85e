//! The PATCH content types: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic
//! merge patch that is a merge patch except that lists known to merge by key in the built-in
//! types (see [`list_merge_key`]) merge element-wise, `finalizers` merge as a set, and the
//! directives kubectl emits (`$patch`, `$retainKeys`, `$setElementOrder/…`,
//! `$deleteFromPrimitiveList/…`) are honoured (`$setElementOrder` only by being dropped).

use serde_json::{Map, Value};

use crate::error::{ApiError, Reason};

/// The PATCH content types the emulator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    /// The patch type of a request's `Content-Type`.
    pub(crate) fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got \"{other}\")"
                ),
            )),
        }
    }
}

/// Applies a merge, JSON or strategic merge patch (`body`) to a copy of `current`.
pub(crate) fn apply_patch(current: &Value, patch_type: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let mut target = current.clone();
    match patch_type {
        PatchType::Merge => json_patch::merge(&mut target, &parse_json(body)?),
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch document: {e}")))?;
            json_patch::patch(&mut target, &patch).map_err(|e| ApiError::new(Reason::Invalid, e.to_string()))?;
        }
        PatchType::Strategic => {
            let patch = parse_json(body)?;
            let Value::Object(patch) = patch else {
                return Err(ApiError::bad_request("strategic merge patch must be a JSON object"));
            };
            match &mut target {
                Value::Object(map) => merge_map(map, &patch),
                _ => return Err(ApiError::bad_request("the object to patch is not a JSON object")),
            }
        }
        PatchType::Apply => return Err(ApiError::internal("server-side apply is not a stateless patch")),
    }
    Ok(target)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON in patch body: {e}")))
}

/// The merge key of a list field of the built-in types that strategic merge and server-side
/// apply merge element-wise, judged by the field name and (for `ports`) the elements.
pub(crate) fn list_merge_key(field: &str, elements: &[Value]) -> Option<&'static str> {
    let has = |key: &str| elements.iter().any(|e| e.get(key).is_some());
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => {
            Some("name")
        }
        "conditions" => Some("type"),
        "volumeMounts" => Some("mountPath"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        _ => None,
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = without_directives(patch);
        return;
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) if inner.get("$patch").and_then(Value::as_str) == Some("delete") => {
                target.remove(key);
            }
            Value::Object(inner) => match target.get_mut(key) {
                Some(Value::Object(existing)) => merge_map(existing, inner),
                _ => {
                    target.insert(key.clone(), Value::Object(without_directives(inner)));
                }
            },
            Value::Array(items) => {
                let existing = match target.remove(key) {
                    Some(Value::Array(existing)) => existing,
                    _ => Vec::new(),
                };
                target.insert(key.clone(), Value::Array(merge_list(key, existing, items)));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        target.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
}

fn merge_list(field: &str, mut existing: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    let replace = patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace {
        return patch
            .iter()
            .filter(|v| v.get("$patch").is_none())
            .map(|v| clean(v.clone()))
            .collect();
    }
    if field == "finalizers" {
        for item in patch {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
        }
        return existing;
    }
    let Some(key) = list_merge_key(field, patch).or_else(|| list_merge_key(field, &existing)) else {
        return patch.iter().map(|v| clean(v.clone())).collect();
    };
    for item in patch {
        let Value::Object(item_map) = item else { continue };
        let id = item_map.get(key);
        let position = existing.iter().position(|e| id.is_some() && e.get(key) == id);
        let delete = item_map.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Value::Object(current) = &mut existing[i] {
                    merge_map(current, item_map);
                }
            }
            (None, false) => existing.push(Value::Object(without_directives(item_map))),
        }
    }
    existing
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), clean(v.clone())))
        .collect()
}

fn clean(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(without_directives(&map)),
        Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(current: Value, patch: Value) -> Value {
        apply_patch(&current, PatchType::Strategic, patch.to_string().as_bytes()).expect("patch applies")
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let current = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let patched = strategic(
            current,
            json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "b:2"}]}}),
        );
        assert_eq!(
            patched,
            json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let current = json!({"metadata": {"finalizers": ["x"], "labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tags": ["p", "q"]}});
        let patched = strategic(
            current,
            json!({"metadata": {"finalizers": ["y"], "labels": {"a": null}},
                "spec": {"containers": [{"name": "a", "$patch": "delete"}], "$deleteFromPrimitiveList/tags": ["p"]}}),
        );
        assert_eq!(
            patched,
            json!({"metadata": {"finalizers": ["x", "y"], "labels": {"b": "2"}},
                "spec": {"containers": [{"name": "b"}], "tags": ["q"]}})
        );
    }

    #[test]
    fn json_patch_failure_is_invalid() {
        let err = apply_patch(
            &json!({"a": 1}),
            PatchType::Json,
            br#"[{"op":"test","path":"/a","value":2}]"#,
        )
        .expect_err("test op fails");
        assert_eq!(err.code(), 422);
        let err = apply_patch(&json!({}), PatchType::Merge, b"{not json").expect_err("bad body");
        assert_eq!(err.code(), 400);
    }
}

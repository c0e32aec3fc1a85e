//! Structural-schema handling of custom resources against their CRD's `openAPIV3Schema`:
//! pruning of unknown fields (reported so `fieldValidation=Strict` can reject them) and
//! validation of `type`, `enum`, `required`, `minimum`/`maximum` (with `exclusive*`),
//! `minLength`/`maxLength`, `minItems`/`maxItems` and `pattern`. Not covered: `format`,
//! `x-kubernetes-validations` (CEL), `oneOf`/`anyOf`/`allOf`/`not`, `default`ing, `nullable`
//! beyond accepting null, `x-kubernetes-int-or-string` beyond accepting both.

use serde_json::{Map, Value};

/// What checking an object against a schema found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Paths of fields the schema does not know; they have been pruned.
    pub(crate) unknown: Vec<String>,
    /// `(field path, message)` for each violated constraint.
    pub(crate) invalid: Vec<(String, String)>,
}

/// Prunes and validates a custom resource (everything but `apiVersion`, `kind`, `metadata`).
pub(crate) fn check_custom_resource(schema: &Value, object: &mut Value) -> Findings {
    let mut findings = Findings::default();
    let Some(object) = object.as_object_mut() else {
        return findings;
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    let preserve = preserves_unknown(schema);
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match properties.and_then(|p| p.get(&key)) {
            Some(child) => {
                if let Some(value) = object.get_mut(&key) {
                    walk(child, value, &key, &mut findings);
                }
            }
            None if preserve => {}
            None => {
                object.remove(&key);
                findings.unknown.push(key);
            }
        }
    }
    check_required(schema, object, "", &mut findings);
    findings
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn walk(schema: &Value, value: &mut Value, path: &str, findings: &mut Findings) {
    if value.is_null() {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !int_or_string
        && !type_matches(expected, value)
    {
        findings.invalid.push((
            path.to_owned(),
            format!("Invalid value: {}: must be of type {expected}", describe(value)),
        ));
        return;
    }
    check_scalar(schema, value, path, findings);
    match value {
        Value::Object(map) => walk_object(schema, map, path, findings),
        Value::Array(items) => {
            check_count(schema, items.len(), "Items", path, findings);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), findings);
                }
            }
        }
        _ => {}
    }
}

fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, findings: &mut Findings) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    if properties.is_none() && additional.is_none() && schema.get("type").is_none() {
        return;
    }
    let preserve = preserves_unknown(schema);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = format!("{path}.{key}");
        let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
        match child_schema {
            Some(child) => {
                if let Some(value) = map.get_mut(&key) {
                    walk(child, value, &child_path, findings);
                }
            }
            None if preserve || (properties.is_none() && schema.get("type").is_none()) => {}
            None => {
                map.remove(&key);
                findings.unknown.push(child_path);
            }
        }
    }
    check_required(schema, map, path, findings);
}

fn check_required(schema: &Value, map: &Map<String, Value>, path: &str, findings: &mut Findings) {
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !map.contains_key(name)
        {
            let field = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            findings.invalid.push((field, "Required value".to_owned()));
        }
    }
}

fn check_scalar(schema: &Value, value: &Value, path: &str, findings: &mut Findings) {
    let mut fail = |message: String| findings.invalid.push((path.to_owned(), message));
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(describe).collect();
        fail(format!(
            "Unsupported value: {}: supported values: {}",
            describe(value),
            allowed.join(", ")
        ));
    }
    if let Some(number) = value.as_f64() {
        let exclusive = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let (bad, op) = if exclusive("exclusiveMinimum") {
                (number <= min, ">")
            } else {
                (number < min, ">=")
            };
            if bad {
                fail(format!("Invalid value: {}: should be {op} {min}", describe(value)));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let (bad, op) = if exclusive("exclusiveMaximum") {
                (number >= max, "<")
            } else {
                (number > max, "<=")
            };
            if bad {
                fail(format!("Invalid value: {}: should be {op} {max}", describe(value)));
            }
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count();
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && (length as u64) < min
        {
            fail(format!(
                "Invalid value: {}: should be at least {min} chars long",
                describe(value)
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && (length as u64) > max
        {
            fail(format!("Too long: may not be more than {max} bytes"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(text) => {
                    fail(format!("Invalid value: {}: should match '{pattern}'", describe(value)));
                }
                Ok(_) => {}
                Err(_) => fail(format!(
                    "Invalid value: the schema pattern '{pattern}' does not compile"
                )),
            }
        }
    }
}

fn check_count(schema: &Value, count: usize, what: &str, path: &str, findings: &mut Findings) {
    let count = count as u64;
    if let Some(min) = schema.get(format!("min{what}")).and_then(Value::as_u64)
        && count < min
    {
        findings.invalid.push((
            path.to_owned(),
            format!("Invalid value: {count}: should have at least {min} items"),
        ));
    }
    if let Some(max) = schema.get(format!("max{what}")).and_then(Value::as_u64)
        && count > max
    {
        findings.invalid.push((
            path.to_owned(),
            format!("Too many: {count}: must have at most {max} items"),
        ));
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn describe(value: &Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["mode"], "properties": {
                "mode": {"type": "string", "enum": ["a", "b"]},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
                "host": {"type": "string", "pattern": "^[a-z]+$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn prunes_unknown_fields() {
        let mut object = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"mode": "a", "bogus": 1, "labels": {"k": "v"}, "free": {"any": {"thing": 1}}}, "extra": true});
        let findings = check_custom_resource(&schema(), &mut object);
        let mut unknown = findings.unknown.clone();
        unknown.sort_unstable();
        assert_eq!(unknown, vec!["extra".to_owned(), "spec.bogus".to_owned()]);
        assert!(findings.invalid.is_empty(), "{:?}", findings.invalid);
        assert_eq!(
            object["spec"],
            json!({"mode": "a", "labels": {"k": "v"}, "free": {"any": {"thing": 1}}})
        );
    }

    #[test]
    fn reports_violations() {
        let mut object = json!({"spec": {"mode": "c", "replicas": 9, "host": "UP"}, "status": {"ready": "yes"}});
        let findings = check_custom_resource(&schema(), &mut object);
        let mut fields: Vec<&str> = findings.invalid.iter().map(|(f, _)| f.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, vec!["spec.host", "spec.mode", "spec.replicas", "status.ready"]);
        let mut missing = json!({"spec": {}});
        let findings = check_custom_resource(&schema(), &mut missing);
        assert_eq!(
            findings.invalid,
            vec![("spec.mode".to_owned(), "Required value".to_owned())]
        );
    }
}

//! Label and field selectors as the list and watch verbs take them (`labelSelector`,
//! `fieldSelector`). Label selectors support `=`, `==`, `!=`, `in`, `notin`, `key` and `!key`;
//! field selectors support `=`, `==` and `!=` on the fields each resource allows.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector; all requirements must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(LabelSelector { requirements })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        self.requirements.iter().all(|(key, op)| {
            let value = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match op {
                LabelOp::Equals(want) => value == Some(want.as_str()),
                LabelOp::NotEquals(want) => value != Some(want.as_str()),
                LabelOp::In(set) => value.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::NotIn(set) => value.is_none_or(|v| !set.iter().any(|s| s == v)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// Splits on commas that are not inside a `( ... )` value set.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_term(term: &str) -> Result<(String, LabelOp), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}: \"{term}\""));
    if let Some(key) = term.strip_prefix('!') {
        return Ok((check_key(key.trim(), term)?, LabelOp::DoesNotExist));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = term.split_once(op) {
            let key = check_key(key.trim(), term)?;
            let value = value.trim().to_owned();
            return Ok((
                key,
                if negate {
                    LabelOp::NotEquals(value)
                } else {
                    LabelOp::Equals(value)
                },
            ));
        }
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or("").trim();
    let rest = words.next().unwrap_or("").trim();
    if rest.is_empty() {
        return Ok((check_key(key, term)?, LabelOp::Exists));
    }
    let (negate, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(invalid("expected one of =, ==, !=, in, notin"));
    };
    let set = set.trim();
    let inner = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| invalid("expected ( values )"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(invalid("for 'in', 'notin' operators, values set can't be empty"));
    }
    let key = check_key(key, term)?;
    Ok((
        key,
        if negate {
            LabelOp::NotIn(values)
        } else {
            LabelOp::In(values)
        },
    ))
}

fn check_key(key: &str, term: &str) -> Result<String, ApiError> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1;
    if valid {
        Ok(key.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "unable to parse requirement: invalid label key \"{key}\" in \"{term}\""
        )))
    }
}

/// A parsed field selector over the fields a resource supports.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `text`, rejecting fields that `supported` does not list (like the real server's
    /// `field label not supported`).
    pub(crate) fn parse(text: &str, supported: &[&str]) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            requirements.push((field.to_owned(), negate, value.trim().to_owned()));
        }
        Ok(FieldSelector { requirements })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, negate, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let value = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (value == *want) != *negate
        })
    }
}

/// The field selectors a resource supports, beyond `metadata.name` and `metadata.namespace`.
pub(crate) fn supported_fields(group: &str, resource: &str) -> Vec<&'static str> {
    let mut fields = vec!["metadata.name", "metadata.namespace"];
    match (group, resource) {
        ("", "pods") => fields.extend([
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ]),
        ("", "secrets") => fields.push("type"),
        ("", "namespaces") => fields.push("status.phase"),
        ("", "events") => fields.extend(["involvedObject.kind", "involvedObject.name", "involvedObject.namespace"]),
        _ => {}
    }
    fields
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_operators() {
        let object = labelled(json!({"app": "web", "tier": "front"}));
        for (selector, expected) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing notin (x)", true),
            ("app=web,tier in (front)", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            let parsed = LabelSelector::parse(selector).expect(selector);
            assert_eq!(parsed.matches(&object), expected, "{selector}");
        }
    }

    #[test]
    fn label_parse_errors() {
        for bad in ["app in web", "app in ()", "a b c", "bad key=1"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let fields = supported_fields("", "pods");
        assert!(
            FieldSelector::parse("spec.nodeName=n1", &fields)
                .expect("parse")
                .matches(&pod)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1", &fields)
                .expect("parse")
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("metadata.name==p,metadata.namespace=ns", &fields)
                .expect("parse")
                .matches(&pod)
        );
        assert!(FieldSelector::parse("spec.nodeName=n1", &supported_fields("", "configmaps")).is_err());
    }
}

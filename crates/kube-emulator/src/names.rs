//! Server-generated identifiers (uids, `generateName` suffixes, opaque tokens) and the name and
//! label syntax checks the real server applies to `metadata`.

use rand::Rng;
use serde_json::Value;

use crate::resources::{Behavior, ResourceDef};

/// A random RFC 4122 version 4 UUID.
pub(crate) fn uid() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `prefix` plus five random characters from the real server's alphabet.
pub(crate) fn generate(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{suffix}")
}

/// An unguessable opaque bearer token.
pub(crate) fn token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let body: String = (0..48)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("emu.{body}")
}

const SUBDOMAIN_HELP: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_HELP: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Checks `metadata.name`, label keys and values; returns `(field, message)` per problem.
pub(crate) fn validate_metadata(def: &ResourceDef, object: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let dns_label = matches!(def.behavior, Behavior::Namespace | Behavior::Service);
    let valid = if dns_label {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !valid {
        let help = if dns_label { LABEL_HELP } else { SUBDOMAIN_HELP };
        causes.push(("metadata.name".to_owned(), format!("Invalid value: \"{name}\": {help}")));
    }
    if let Some(labels) = object.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if !is_qualified_name(key) {
                causes.push((
                    "metadata.labels".to_owned(),
                    format!("Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
            match value.as_str() {
                Some(v) if v.is_empty() || (v.len() <= 63 && is_label_value(v)) => {}
                _ => causes.push((
                    "metadata.labels".to_owned(),
                    format!("Invalid value: {value}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
            }
        }
    }
    causes
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

fn is_label_value(text: &str) -> bool {
    let edges_ok =
        text.starts_with(|c: char| c.is_ascii_alphanumeric()) && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    edges_ok
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && name.len() <= 63 && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_syntax() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("a.b"));
        assert!(is_dns_subdomain("widgets.example.com"));
        assert!(!is_dns_subdomain("-a"));
        assert!(is_qualified_name("ambit.dev/dataplane-mode"));
        assert!(!is_qualified_name("bad key"));
        assert!(is_label_value("ambient"));
    }

    #[test]
    fn generated_identifiers_look_right() {
        let id = uid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(generate("web-").starts_with("web-"));
        assert_eq!(generate("x").len(), 6);
    }
}

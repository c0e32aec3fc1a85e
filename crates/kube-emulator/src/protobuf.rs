//! Decoding of the Kubernetes protobuf request encoding (`application/vnd.kubernetes.protobuf`:
//! the `k8s\0` magic, a `runtime.Unknown` envelope, then the object) into JSON, for the kinds
//! kubectl's typed `create` subcommands send that way: Namespace, ConfigMap, Secret and
//! ServiceAccount. Other kinds get 415 (responses are always JSON, which those clients accept).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::clock::format_rfc3339;
use crate::error::{ApiError, Reason};

/// How one protobuf field maps to JSON.
#[derive(Clone, Copy)]
enum Kind {
    String,
    Bytes,
    Int,
    Bool,
    Time,
    StringMap,
    BytesMap,
    Message(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    number: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

const fn f(number: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
    }
}

const fn list(number: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Kind::String),
    f(3, "name", Kind::String),
    f(4, "uid", Kind::String),
    f(5, "apiVersion", Kind::String),
    f(6, "controller", Kind::Bool),
    f(7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Kind::String),
    f(2, "generateName", Kind::String),
    f(3, "namespace", Kind::String),
    f(5, "uid", Kind::String),
    f(6, "resourceVersion", Kind::String),
    f(7, "generation", Kind::Int),
    f(8, "creationTimestamp", Kind::Time),
    f(11, "labels", Kind::StringMap),
    f(12, "annotations", Kind::StringMap),
    list(13, "ownerReferences", Kind::Message(OWNER_REFERENCE)),
    list(14, "finalizers", Kind::String),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Kind::String)];

const NAMESPACE: &[Field] = &[
    f(1, "metadata", Kind::Message(OBJECT_META)),
    f(2, "spec", Kind::Message(&[list(1, "finalizers", Kind::String)])),
];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Kind::Message(OBJECT_META)),
    f(2, "data", Kind::StringMap),
    f(3, "binaryData", Kind::BytesMap),
    f(4, "immutable", Kind::Bool),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Kind::Message(OBJECT_META)),
    f(2, "data", Kind::BytesMap),
    f(3, "type", Kind::String),
    f(4, "stringData", Kind::StringMap),
    f(5, "immutable", Kind::Bool),
];

const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Kind::Message(OBJECT_META)),
    list(3, "imagePullSecrets", Kind::Message(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Kind::Bool),
];

const UNKNOWN: &[Field] = &[
    f(
        1,
        "typeMeta",
        Kind::Message(&[f(1, "apiVersion", Kind::String), f(2, "kind", Kind::String)]),
    ),
    f(2, "raw", Kind::Bytes),
];

/// Whether a request `Content-Type` is the protobuf encoding.
pub(crate) fn is_protobuf(content_type: &str) -> bool {
    content_type.starts_with("application/vnd.kubernetes.protobuf")
}

/// Decodes a protobuf-encoded object into its JSON form.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ApiError::bad_request("protobuf body does not start with the k8s\\0 magic"))?;
    let unknown = message(envelope, UNKNOWN)?;
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or("");
    let raw = STANDARD
        .decode(raw)
        .map_err(|_| ApiError::bad_request("protobuf envelope has a malformed raw field"))?;
    let fields = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        _ => {
            return Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!("the kube emulator cannot decode {api_version} {kind} from protobuf; send application/json"),
            ));
        }
    };
    let mut object = message(&raw, fields)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!(api_version));
        map.insert("kind".to_owned(), json!(kind));
    }
    Ok(object)
}

fn malformed() -> ApiError {
    ApiError::bad_request("malformed protobuf body")
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or_else(malformed)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ApiError> {
        if len > self.bytes.len() {
            return Err(malformed());
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }
}

fn message(bytes: &[u8], fields: &[Field]) -> Result<Value, ApiError> {
    let mut reader = Reader { bytes };
    let mut out = Map::new();
    while !reader.bytes.is_empty() {
        let key = reader.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let (scalar, payload) = match wire {
            0 => (reader.varint()?, &[][..]),
            1 => (0, reader.take(8)?),
            2 => {
                let len = usize::try_from(reader.varint()?).map_err(|_| malformed())?;
                (0, reader.take(len)?)
            }
            5 => (0, reader.take(4)?),
            _ => return Err(malformed()),
        };
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            continue;
        };
        let text = || String::from_utf8(payload.to_vec()).map_err(|_| malformed());
        let value = match field.kind {
            // Optional strings arrive explicitly empty; the JSON form omits them.
            Kind::String if payload.is_empty() && !field.repeated => continue,
            Kind::String => json!(text()?),
            Kind::Bytes => json!(STANDARD.encode(payload)),
            Kind::Int => json!(scalar as i64),
            Kind::Bool => json!(scalar != 0),
            Kind::Time => {
                let time = message(payload, &[f(1, "seconds", Kind::Int)])?;
                json!(format_rfc3339(time.get("seconds").and_then(Value::as_i64).unwrap_or(0)))
            }
            Kind::StringMap | Kind::BytesMap => {
                let value_kind = if matches!(field.kind, Kind::StringMap) {
                    Kind::String
                } else {
                    Kind::Bytes
                };
                let entry = message(payload, &[f(1, "key", Kind::String), f(2, "value", value_kind)])?;
                let key = entry.get("key").and_then(Value::as_str).unwrap_or("").to_owned();
                let value = entry.get("value").cloned().unwrap_or_else(|| json!(""));
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(map) = map.as_object_mut() {
                    map.insert(key, value);
                }
                continue;
            }
            Kind::Message(inner) => message(payload, inner)?,
        };
        if field.repeated {
            let list = out.entry(field.name).or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.push(value);
            }
        } else {
            out.insert(field.name.to_owned(), value);
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(number << 3 | 2).expect("small field number")];
        out.push(u8::try_from(payload.len()).expect("short payload"));
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_namespace() {
        let label = [field(1, b"team"), field(2, b"mesh")].concat();
        let meta = [field(1, b"foo"), field(11, &label)].concat();
        let namespace = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let envelope = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &namespace)].concat();
        let decoded = decode(&envelope).expect("decodes");
        assert_eq!(
            decoded,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo", "labels": {"team": "mesh"}}})
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(b"nope").expect_err("no magic").code(), 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").expect_err("truncated").code(), 400);
    }
}

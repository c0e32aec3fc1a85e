//! Delta ADS responses encoded here rather than by tonic: each resource is encoded once, when it
//! enters the store, and a response is its resources' bytes copied into one buffer of exactly
//! the message's size, owned by that response alone and freed once h2 has written it.
//!
//! tonic's encoder writes all of a stream's messages into one `BytesMut` that grows to the
//! largest message and keeps that allocation until the stream ends; a stream opens with the full
//! snapshot (about 3 MiB at 10k pods), so each connected client held about 3 MiB for good.

use ambit_proto::envoy::service::discovery::v3::Resource;
use bytes::Bytes;
use prost::encoding::{self, WireType};
use tonic::Status;

/// Field tags of `DeltaDiscoveryResponse` (envoy/service/discovery/v3/discovery.proto).
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

/// The gRPC length prefix: a compressed flag byte and a big-endian u32 length (gRPC over HTTP/2,
/// "Length-Prefixed-Message").
const PREFIX: usize = 5;

/// `resource` as one element of a response's `resources` field: key, length, message.
pub(crate) fn encode_resource(resource: &Resource) -> Bytes {
    let mut buf = Vec::with_capacity(encoding::message::encoded_len(RESOURCES, resource));
    encoding::message::encode(RESOURCES, resource, &mut buf);
    Bytes::from(buf)
}

/// A `DeltaDiscoveryResponse` as one uncompressed gRPC message, the same bytes prost would
/// write; `resources` come from [`encode_resource`].
pub(crate) fn encode_response(
    type_url: &str,
    nonce: &str,
    resources: &[Bytes],
    removed: &[String],
) -> Result<Bytes, Status> {
    let len = resources.iter().map(Bytes::len).sum::<usize>()
        + optional_string_len(TYPE_URL, type_url)
        + optional_string_len(NONCE, nonce)
        + removed
            .iter()
            .map(|name| string_len(REMOVED_RESOURCES, name))
            .sum::<usize>();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "the {type_url} response is {len} bytes, over the 4 GiB a gRPC message can carry"
        ))
    })?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    // In field-number order, as prost writes them; proto3 leaves empty singular strings out.
    for resource in resources {
        buf.extend_from_slice(resource);
    }
    if !type_url.is_empty() {
        put_string(TYPE_URL, type_url, &mut buf);
    }
    if !nonce.is_empty() {
        put_string(NONCE, nonce, &mut buf);
    }
    for name in removed {
        put_string(REMOVED_RESOURCES, name, &mut buf);
    }
    debug_assert_eq!(buf.len(), buf.capacity(), "response length computed wrongly");
    Ok(Bytes::from(buf))
}

fn string_len(tag: u32, value: &str) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
}

fn optional_string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() { 0 } else { string_len(tag, value) }
}

fn put_string(tag: u32, value: &str, buf: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use prost::Message;
    use prost_types::Any;

    use super::*;

    fn resource(name: &str, value: Vec<u8>) -> Resource {
        Resource {
            version: "0123456789abcdef".to_owned(),
            resource: Some(Any {
                type_url: "type.googleapis.com/istio.workload.Address".to_owned(),
                value,
            }),
            name: name.to_owned(),
            aliases: Vec::new(),
        }
    }

    fn prost_message(response: &DeltaDiscoveryResponse) -> Vec<u8> {
        let body = response.encode_to_vec();
        let mut message = vec![0];
        message.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn responses_are_the_bytes_prost_writes() {
        // Sizes around the one- and two-byte length varints, and an empty removal name.
        let resources = vec![
            resource("default/pod-a", vec![1; 3]),
            resource("default/pod-b", vec![2; 127]),
            resource("default/pod-c", vec![3; 300]),
        ];
        let removed = vec!["default/gone".to_owned(), String::new()];
        for (type_url, nonce, resources, removed) in [
            (
                "type.googleapis.com/istio.workload.Address",
                "17",
                resources.clone(),
                removed.clone(),
            ),
            (
                "type.googleapis.com/istio.security.Authorization",
                "1",
                Vec::new(),
                Vec::new(),
            ),
            ("type.googleapis.com/istio.workload.Address", "", resources, Vec::new()),
            ("", "3", Vec::new(), removed),
        ] {
            let expected = prost_message(&DeltaDiscoveryResponse {
                system_version_info: String::new(),
                resources: resources.clone(),
                type_url: type_url.to_owned(),
                nonce: nonce.to_owned(),
                removed_resources: removed.clone(),
            });
            let encoded: Vec<Bytes> = resources.iter().map(encode_resource).collect();
            let ours = encode_response(type_url, nonce, &encoded, &removed).expect("fits");
            assert_eq!(ours.as_ref(), expected.as_slice(), "{type_url} nonce {nonce:?}");
        }
    }

    #[test]
    fn a_response_owns_exactly_its_bytes() {
        let encoded = [encode_resource(&resource("default/pod-a", vec![7; 1000]))];
        let response = encode_response("t", "1", &encoded, &[]).expect("fits");
        // Nothing else shares this allocation, and it has no spare room to be kept for later.
        assert!(response.is_unique());
        let vec = Vec::from(response);
        assert_eq!(vec.len(), vec.capacity());
    }
}

//! The messages on the wire, encoded and decoded without I/O so the decoders can be fuzzed.
//! Checks that need the file descriptor itself (is it a netns?) live in the client.

use std::os::fd::OwnedFd;

use ambit_proto::istio::workload::zds::{
    Ack, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use prost::Message;

use crate::ProtocolError;

/// One request from the agent, as ztunnel receives it.
///
/// `F` is the pod's netns: an [`OwnedFd`] from [`crate::ZdsClient::next`], `()` from
/// [`decode_request`], which sees only how many descriptors arrived.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZdsRequest<F = OwnedFd> {
    /// Start (or keep) proxying pod `uid` inside `netns`. Istio's ztunnel treats a repeated add
    /// with the same netns as a no-op and one with a new netns as a replacement.
    Add {
        /// The pod's uid.
        uid: String,
        /// Name, namespace and service account of the pod.
        info: WorkloadInfo,
        /// The pod's network namespace, checked to be one.
        netns: F,
    },
    /// Keep pod `uid` if it is already proxied: the agent lists it in the snapshot but no longer
    /// holds its netns. Only valid before [`ZdsRequest::SnapshotSent`].
    Keep {
        /// The pod's uid.
        uid: String,
    },
    /// Stop proxying pod `uid`. Idempotent.
    Del {
        /// The pod's uid.
        uid: String,
    },
    /// Every current pod was sent: drop those that were neither added nor kept.
    SnapshotSent,
}

impl<F> ZdsRequest<F> {
    /// The pod the request is about, if any.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Self::Add { uid, .. } | Self::Keep { uid } | Self::Del { uid } => Some(uid),
            Self::SnapshotSent => None,
        }
    }
}

/// Decodes one request packet of `bytes` that arrived with `fds` file descriptors.
///
/// Used by [`crate::ZdsClient::next`]; pure, so it can be fuzzed. Exactly one descriptor must come
/// with an add and none with anything else; every request but snapshot-sent must name a pod.
pub fn decode_request(bytes: &[u8], fds: usize) -> Result<ZdsRequest<()>, ProtocolError> {
    use workload_request::Payload;

    let request = WorkloadRequest::decode(bytes).map_err(|reason| ProtocolError::Undecodable {
        message: "WorkloadRequest",
        reason,
    })?;
    let payload = request.payload.ok_or(ProtocolError::EmptyPayload {
        message: "WorkloadRequest",
    })?;
    if fds > 0 && !matches!(payload, Payload::Add(_)) {
        let message = match payload {
            Payload::Add(_) => "AddWorkload",
            Payload::Keep(_) => "KeepWorkload",
            Payload::Del(_) => "DelWorkload",
            Payload::SnapshotSent(_) => "SnapshotSent",
        };
        return Err(ProtocolError::UnexpectedFds { message, count: fds });
    }
    Ok(match payload {
        Payload::Add(add) => {
            let uid = named(add.uid, "AddWorkload")?;
            match fds {
                0 => return Err(ProtocolError::MissingNetns { uid }),
                1 => {}
                count => return Err(ProtocolError::TooManyFds { uid, count }),
            }
            let Some(info) = add.workload_info else {
                return Err(ProtocolError::MissingWorkloadInfo { uid });
            };
            ZdsRequest::Add { uid, info, netns: () }
        }
        Payload::Keep(keep) => ZdsRequest::Keep {
            uid: named(keep.uid, "KeepWorkload")?,
        },
        Payload::Del(del) => ZdsRequest::Del {
            uid: named(del.uid, "DelWorkload")?,
        },
        Payload::SnapshotSent(_) => ZdsRequest::SnapshotSent,
    })
}

fn named(uid: String, message: &'static str) -> Result<String, ProtocolError> {
    if uid.is_empty() {
        return Err(ProtocolError::EmptyUid { message });
    }
    Ok(uid)
}

/// Decodes ztunnel's hello; only V1 is accepted.
pub fn decode_hello(bytes: &[u8], fds: usize) -> Result<Version, ProtocolError> {
    no_fds("ZdsHello", fds)?;
    let hello = ZdsHello::decode(bytes).map_err(|reason| ProtocolError::Undecodable {
        message: "ZdsHello",
        reason,
    })?;
    match Version::try_from(hello.version) {
        Ok(Version::V1) => Ok(Version::V1),
        _ => Err(ProtocolError::UnsupportedVersion { version: hello.version }),
    }
}

/// Decodes ztunnel's answer to a request: the ack's error string, empty on success.
pub fn decode_ack(bytes: &[u8], fds: usize) -> Result<String, ProtocolError> {
    no_fds("WorkloadResponse", fds)?;
    let response = WorkloadResponse::decode(bytes).map_err(|reason| ProtocolError::Undecodable {
        message: "WorkloadResponse",
        reason,
    })?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) => Ok(ack.error),
        None => Err(ProtocolError::EmptyPayload {
            message: "WorkloadResponse",
        }),
    }
}

fn no_fds(message: &'static str, fds: usize) -> Result<(), ProtocolError> {
    match fds {
        0 => Ok(()),
        count => Err(ProtocolError::UnexpectedFds { message, count }),
    }
}

pub(crate) fn encode_hello() -> Vec<u8> {
    ZdsHello {
        version: Version::V1 as i32,
    }
    .encode_to_vec()
}

pub(crate) fn encode_request(payload: workload_request::Payload) -> Vec<u8> {
    WorkloadRequest { payload: Some(payload) }.encode_to_vec()
}

/// The longest nack text we send, so the ack stays under [`crate::MAX_SEND_BYTES`].
const MAX_NACK_BYTES: usize = 1000;

/// Encodes an ack; `error` is empty on success. A longer error is cut (at a character boundary)
/// so the packet fits Istio's 1024-byte receive buffer.
pub(crate) fn encode_ack(error: &str) -> Vec<u8> {
    let error = if error.len() > MAX_NACK_BYTES {
        const ELLIPSIS: &str = "…";
        let mut end = MAX_NACK_BYTES - ELLIPSIS.len();
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{ELLIPSIS}", &error[..end])
    } else {
        error.to_owned()
    };
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error })),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_proto::istio::workload::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent};
    use workload_request::Payload;

    fn info() -> WorkloadInfo {
        WorkloadInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
        }
    }

    fn add(uid: &str, info: Option<WorkloadInfo>) -> Vec<u8> {
        encode_request(Payload::Add(AddWorkload {
            uid: uid.into(),
            workload_info: info,
        }))
    }

    #[test]
    fn decodes_every_request() {
        assert_eq!(
            decode_request(&add("u1", Some(info())), 1),
            Ok(ZdsRequest::Add {
                uid: "u1".into(),
                info: info(),
                netns: ()
            })
        );
        let keep = encode_request(Payload::Keep(KeepWorkload { uid: "u2".into() }));
        assert_eq!(decode_request(&keep, 0), Ok(ZdsRequest::Keep { uid: "u2".into() }));
        let del = encode_request(Payload::Del(DelWorkload { uid: "u3".into() }));
        assert_eq!(decode_request(&del, 0), Ok(ZdsRequest::Del { uid: "u3".into() }));
        let sent = encode_request(Payload::SnapshotSent(SnapshotSent {}));
        assert_eq!(decode_request(&sent, 0), Ok(ZdsRequest::SnapshotSent));
    }

    #[test]
    fn rejects_wrong_descriptor_counts() {
        assert_eq!(
            decode_request(&add("u1", Some(info())), 0),
            Err(ProtocolError::MissingNetns { uid: "u1".into() })
        );
        assert_eq!(
            decode_request(&add("u1", Some(info())), 2),
            Err(ProtocolError::TooManyFds {
                uid: "u1".into(),
                count: 2
            })
        );
        let del = encode_request(Payload::Del(DelWorkload { uid: "u3".into() }));
        assert_eq!(
            decode_request(&del, 1),
            Err(ProtocolError::UnexpectedFds {
                message: "DelWorkload",
                count: 1
            })
        );
    }

    #[test]
    fn rejects_incomplete_requests() {
        assert_eq!(
            decode_request(&add("", Some(info())), 1),
            Err(ProtocolError::EmptyUid { message: "AddWorkload" })
        );
        assert_eq!(
            decode_request(&add("u1", None), 1),
            Err(ProtocolError::MissingWorkloadInfo { uid: "u1".into() })
        );
        // An empty packet is a WorkloadRequest with no payload.
        assert_eq!(
            decode_request(&[], 0),
            Err(ProtocolError::EmptyPayload {
                message: "WorkloadRequest"
            })
        );
        // A request type from a newer agent (unknown field 9) decodes with no payload.
        assert_eq!(
            decode_request(&[0x4a, 0x00], 0),
            Err(ProtocolError::EmptyPayload {
                message: "WorkloadRequest"
            })
        );
        assert!(matches!(
            decode_request(b"\xff\xff\xff garbage", 0),
            Err(ProtocolError::Undecodable {
                message: "WorkloadRequest",
                ..
            })
        ));
    }

    #[test]
    fn no_prefix_or_mutation_of_a_request_panics() {
        let packet = add("6f1c0b9e-2c1d-4c55-8f0e-0d9c3f1b2a77", Some(info()));
        for end in 0..packet.len() {
            let _ = decode_request(&packet[..end], 1);
        }
        // A small deterministic generator: no dependency, same inputs every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut mutated = packet.clone();
            let at = (state as usize) % mutated.len();
            mutated[at] = (state >> 32) as u8;
            let _ = decode_request(&mutated, (state >> 40) as usize % 3);
        }
    }

    #[test]
    fn hello_must_be_v1() {
        assert_eq!(decode_hello(&encode_hello(), 0), Ok(Version::V1));
        let v2 = ZdsHello { version: 2 }.encode_to_vec();
        assert_eq!(
            decode_hello(&v2, 0),
            Err(ProtocolError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(
            decode_hello(&[], 0),
            Err(ProtocolError::UnsupportedVersion { version: 0 })
        );
        assert_eq!(
            decode_hello(&encode_hello(), 1),
            Err(ProtocolError::UnexpectedFds {
                message: "ZdsHello",
                count: 1
            })
        );
    }

    #[test]
    fn acks_round_trip_and_long_errors_fit_istio() {
        assert_eq!(decode_ack(&encode_ack(""), 0), Ok(String::new()));
        assert_eq!(decode_ack(&encode_ack("no"), 0), Ok("no".into()));
        let long = "é".repeat(2000);
        let packet = encode_ack(&long);
        assert!(packet.len() <= crate::MAX_SEND_BYTES, "{}", packet.len());
        let error = decode_ack(&packet, 0).expect("decodes");
        assert!(error.ends_with('…') && long.starts_with(error.trim_end_matches('…')));
        assert_eq!(
            decode_ack(&WorkloadResponse { payload: None }.encode_to_vec(), 0),
            Err(ProtocolError::EmptyPayload {
                message: "WorkloadResponse"
            })
        );
    }
}

//! ZDS packets are a peer's bytes on the node's unix socket: ztunnel decodes the agent's requests,
//! the agent decodes ztunnel's hello and acks. No decoder may panic, a decoded request must keep
//! the descriptor rules (one netns with an add, none otherwise) and re-encode to itself, and every
//! refusal must have a message (it becomes the nack text).
#![no_main]

use ambit_proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadRequest, workload_request::Payload,
};
use ambit_zds::{ZdsRequest, decode_ack, decode_hello, decode_request};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    // The first byte is how many descriptors came with the packet (SCM_RIGHTS), the rest the packet.
    let Some((&fds, packet)) = input.split_first() else {
        return;
    };
    let fds = usize::from(fds % 4);

    match decode_request(packet, fds) {
        Ok(request) => {
            assert!(
                request.uid().is_none_or(|uid| !uid.is_empty()),
                "{request:?} names an empty pod"
            );
            let payload = match &request {
                ZdsRequest::Add { uid, info, .. } => {
                    assert_eq!(fds, 1, "an add needs exactly one netns: {request:?}");
                    Payload::Add(AddWorkload {
                        uid: uid.clone(),
                        workload_info: Some(info.clone()),
                    })
                }
                ZdsRequest::Keep { uid } => Payload::Keep(KeepWorkload { uid: uid.clone() }),
                ZdsRequest::Del { uid } => Payload::Del(DelWorkload { uid: uid.clone() }),
                ZdsRequest::SnapshotSent => Payload::SnapshotSent(SnapshotSent {}),
                other => panic!("a request kind this target does not know: {other:?}"),
            };
            if !matches!(request, ZdsRequest::Add { .. }) {
                assert_eq!(fds, 0, "descriptors accepted with {request:?}");
            }
            let again = WorkloadRequest { payload: Some(payload) }.encode_to_vec();
            assert_eq!(
                decode_request(&again, fds).as_ref(),
                Ok(&request),
                "re-encoded {request:?}"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }

    match decode_hello(packet, fds) {
        Ok(version) => assert!(
            version == Version::V1 && fds == 0,
            "accepted hello {version:?} with {fds} fds"
        ),
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }

    match decode_ack(packet, fds) {
        Ok(_) => assert_eq!(fds, 0, "accepted an ack with descriptors"),
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }
});

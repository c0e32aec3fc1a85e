//! Workload xDS resources are the control plane's bytes, which ztunnel turns into the model it
//! authorizes connections with. The bytes are decoded both as an `istio.workload.Address` and as
//! an `istio.security.Authorization`: neither conversion may panic, an accepted value must convert
//! back to the wire and in again unchanged, and an accepted policy must decide connections.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_model::authorization::{ConnectionInfo, evaluate};
use ambit_model::{Action, AuthorizationPolicy, MtlsMode, State, Workload};
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ambit_xds::convert::{
    ConvertOptions, ReceivedAddress, address_from_any, authorization_from_any, authorization_from_proto,
    authorization_to_proto, service_from_proto, service_to_proto, workload_from_proto, workload_to_proto,
};
use libfuzzer_sys::fuzz_target;
use prost_types::Any;

const RESOURCE: &str = "Kubernetes//Pod/default/fuzz";

fuzz_target!(|bytes: &[u8]| {
    let options = ConvertOptions::default();
    let address = Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: bytes.to_vec(),
    };
    match address_from_any(RESOURCE, &address, &options) {
        Ok(ReceivedAddress::Workload {
            workload,
            authorization_policies,
        }) => workload_round_trip(&workload, authorization_policies, &options),
        Ok(ReceivedAddress::Service(service)) => {
            assert!(!service.name.is_empty() && !service.namespace.is_empty() && !service.hostname.is_empty());
            let back = service_from_proto(RESOURCE, service_to_proto(&service))
                .unwrap_or_else(|e| panic!("{service:?} sent back is refused: {e}"));
            assert_eq!(back, service);
        }
        Ok(other) => panic!("an address kind this target does not know: {other:?}"),
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }

    let authorization = Any {
        type_url: AUTHORIZATION_TYPE_URL.to_owned(),
        value: bytes.to_vec(),
    };
    match authorization_from_any(RESOURCE, &authorization) {
        Ok(policy) => {
            assert!(!policy.name.is_empty() && !policy.namespace.is_empty(), "{policy:?}");
            let proto = authorization_to_proto(&policy)
                .unwrap_or_else(|| panic!("a received policy has no wire form: {policy:?}"));
            let back = authorization_from_proto(RESOURCE, proto)
                .unwrap_or_else(|e| panic!("{policy:?} sent back is refused: {e}"));
            assert_eq!(back, policy);
            decide(&policy);
        }
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }
});

fn workload_round_trip(workload: &Workload, policies: Vec<String>, options: &ConvertOptions) {
    assert!(
        !workload.name.is_empty() && !workload.namespace.is_empty(),
        "{workload:?}"
    );
    assert!(!workload.addresses.is_empty(), "{workload:?}");
    assert!(
        !workload.service_account.is_empty() && !workload.trust_domain.is_empty(),
        "{workload:?}"
    );
    // Sending it from a state that holds nothing else: its own memberships and policy names only.
    let state = State::from_parts(
        options.trust_domain.clone(),
        MtlsMode::default(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let proto = workload_to_proto(&state, workload, &policies, options);
    let (back, back_policies) = workload_from_proto(RESOURCE, proto, options)
        .unwrap_or_else(|e| panic!("{workload:?} sent back is refused: {e}"));
    assert_eq!(&back, workload);
    // The wire carries the policy names as a set.
    let expected: Vec<String> = policies.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(back_policies, expected);
}

/// One policy alone decides as Istio's precedence says, for peers of both families.
fn decide(policy: &AuthorizationPolicy) {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3));
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 0, 3).to_ipv6_mapped());
    let peers = [
        (Some("cluster.local/ns/default/sa/sleep"), None, v4, mapped, 8080),
        (Some("td/ns/data/sa/db"), Some("data"), v6, v6, 443),
        (None, None, mapped, v4, 1),
    ];
    for (source_principal, source_namespace, source_ip, destination_ip, destination_port) in peers {
        let conn = ConnectionInfo {
            source_principal,
            source_namespace,
            source_ip,
            destination_ip,
            destination_port,
        };
        let matched = policy.matches(&conn);
        let decision = evaluate([policy], &conn);
        match policy.action {
            Action::Allow => assert_eq!(decision.allowed, matched, "{decision:?}"),
            Action::Deny => assert_eq!(decision.allowed, !matched, "{decision:?}"),
            _ => {}
        }
    }
}

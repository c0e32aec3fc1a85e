use std::net::IpAddr;
use std::sync::Arc;

use ambit_model::{ConnectionInfo, MtlsMode, State, Workload};
use ambit_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use ambit_proto::istio::security as sec;
use ambit_proto::istio::workload as wl;
use prost::Message;

use super::*;
use crate::client::cache::Cache;

const MESH: &str = r#"
trustDomain: cluster.local
workloads:
  - { name: sleep-1, namespace: default, serviceAccount: sleep, node: node1, addresses: [10.1.0.2], labels: { app: sleep }, workloadName: sleep }
  - { name: echo-1, namespace: default, node: node2, addresses: [10.1.0.3, "fd00::3"], labels: { app: echo }, workloadName: echo }
  - { name: echo-2, namespace: default, node: node2, addresses: [10.1.0.4], labels: { app: echo }, protocol: TCP }
  - { name: db-1, namespace: data, serviceAccount: db, node: node1, addresses: [10.2.0.2], labels: { app: db } }
services:
  - { name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: [10.96.0.10], ports: [ { port: 80, targetPort: 8080 } ], selector: { app: echo } }
authorizationPolicies:
  - name: deny-sleep
    namespace: default
    selector: { app: echo }
    action: DENY
    rules:
      - from: [ { principals: ["cluster.local/ns/default/sa/sleep"], ipBlocks: ["10.0.0.0/8"] } ]
        to: [ { ports: [9090] } ]
  - name: allow-ns
    namespace: data
    rules:
      - from: [ { namespaces: ["data", "default*"] } ]
peerAuthentications:
  - { name: strict, namespace: data, mode: STRICT }
  - name: ports
    namespace: default
    selector: { app: echo }
    mode: STRICT
    portLevelMtls: { 8080: PERMISSIVE }
"#;

fn sent(yaml: &str) -> (State, Resources) {
    let state = State::from_config(ambit_model::config::parse(yaml).expect("test config"));
    let resources = to_resources(&state, &ConvertOptions::default());
    (state, resources)
}

fn response(type_url: &str, resources: &BTreeMap<String, Any>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        nonce: "1".to_owned(),
        resources: resources
            .iter()
            .map(|(name, any)| Resource {
                name: name.clone(),
                version: "1".to_owned(),
                resource: Some(any.clone()),
                aliases: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn received(resources: &Resources) -> State {
    let mut cache = Cache::default();
    let options = ConvertOptions::default();
    cache
        .apply(&response(ADDRESS_TYPE_URL, &resources.addresses), &options)
        .expect("addresses apply");
    cache
        .apply(&response(AUTHORIZATION_TYPE_URL, &resources.authorizations), &options)
        .expect("authorizations apply");
    cache.state("cluster.local")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// What the wire keeps of a workload.
fn wire_view(w: &Workload) -> Workload {
    Workload {
        labels: Default::default(),
        netns: None,
        ..w.clone()
    }
}

fn decision(state: &State, dst: &str, principal: Option<&str>, src: &str, port: u16) -> bool {
    let dst_ip = ip(dst);
    let workload = Arc::clone(state.workload_by_ip(dst_ip).expect("destination"));
    state
        .authorize(
            &workload,
            &ConnectionInfo {
                source_principal: principal,
                source_namespace: None,
                source_ip: ip(src),
                destination_ip: dst_ip,
                destination_port: port,
            },
        )
        .allowed
}

#[test]
fn names_follow_istio() {
    let (_, resources) = sent(MESH);
    let names: Vec<&str> = resources.addresses.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/data/db-1",
            "Kubernetes//Pod/default/echo-1",
            "Kubernetes//Pod/default/echo-2",
            "Kubernetes//Pod/default/sleep-1",
            "default/echo.default.svc.cluster.local",
        ]
    );
    let policies: Vec<&str> = resources.authorizations.keys().map(String::as_str).collect();
    assert_eq!(
        policies,
        [
            "ambit-system/istio_converted_static_strict",
            "data/allow-ns",
            "default/converted_peer_authentication_ports",
            "default/deny-sleep",
        ]
    );
}

#[test]
fn round_trip_keeps_what_the_wire_carries() {
    let (state, resources) = sent(MESH);
    let back = received(&resources);
    for workload in state.workloads() {
        let got = back
            .workload_by_name(&workload.namespace, &workload.name)
            .expect("workload round-trips");
        let mut expected = wire_view(workload);
        // Selector memberships travel as explicit port lists.
        for service in state.services() {
            if state.endpoints(service).iter().any(|w| w.name == workload.name) {
                expected.services.insert(service.endpoint_key(), service.ports.clone());
            }
        }
        assert_eq!(**got, expected);
    }
    let echo = state.services().next().expect("service");
    let echo_back = back.service_by_hostname(&echo.hostname).expect("service round-trips");
    assert_eq!((&echo_back.vips, &echo_back.ports), (&echo.vips, &echo.ports));
    let names = |s: &State, svc| s.endpoints(svc).iter().map(|w| w.key()).collect::<Vec<_>>();
    assert_eq!(names(&back, echo_back), names(&state, echo));
}

#[test]
fn authorization_decisions_survive_the_wire() {
    let (state, resources) = sent(MESH);
    let back = received(&resources);
    let sleep = Some("cluster.local/ns/default/sa/sleep");
    let other = Some("cluster.local/ns/default/sa/other");
    let db = Some("cluster.local/ns/data/sa/db");
    let cases = [
        ("10.1.0.3", sleep, "10.1.0.2", 9090),
        ("10.1.0.3", other, "10.1.0.2", 9090),
        ("10.1.0.3", sleep, "10.1.0.2", 8080),
        ("10.2.0.2", db, "10.2.0.9", 5432),
        ("10.2.0.2", sleep, "10.1.0.2", 5432),
        ("10.2.0.2", Some("cluster.local/ns/prod/sa/x"), "10.3.0.2", 5432),
    ];
    for (dst, principal, src, port) in cases {
        assert_eq!(
            decision(&back, dst, principal, src, port),
            decision(&state, dst, principal, src, port),
            "{principal:?} -> {dst}:{port}"
        );
    }
}

#[test]
fn strict_peer_authentication_is_enforced_from_the_wire() {
    let (state, resources) = sent(MESH);
    let back = received(&resources);
    // data is STRICT: plaintext refused, mTLS allowed (by allow-ns).
    assert_eq!(
        state.mtls_mode(&state.workload_by_ip(ip("10.2.0.2")).cloned().expect("db"), 5432),
        MtlsMode::Strict
    );
    assert!(!decision(&back, "10.2.0.2", None, "10.2.0.9", 5432));
    assert!(decision(
        &back,
        "10.2.0.2",
        Some("cluster.local/ns/data/sa/db"),
        "10.2.0.9",
        5432
    ));
    // echo is STRICT except port 8080.
    assert!(!decision(&back, "10.1.0.3", None, "10.9.0.1", 9000));
    assert!(decision(&back, "10.1.0.3", None, "10.9.0.1", 8080));
    // sleep is PERMISSIVE.
    assert!(decision(&back, "10.1.0.2", None, "10.9.0.1", 9000));
}

#[test]
fn mesh_default_strict_becomes_the_static_policy() {
    let (_, resources) = sent(
        "meshDefaults: { peerAuthentication: STRICT }\nworkloads:\n  - { name: a, namespace: x, node: n, addresses: [10.0.0.1] }\n",
    );
    let back = received(&resources);
    assert!(
        resources
            .authorizations
            .contains_key("ambit-system/istio_converted_static_strict")
    );
    assert!(!decision(&back, "10.0.0.1", None, "10.0.0.2", 80));
    assert!(decision(
        &back,
        "10.0.0.1",
        Some("cluster.local/ns/x/sa/default"),
        "10.0.0.2",
        80
    ));
}

#[test]
fn audit_policies_are_skipped_and_reported() {
    let (_, resources) =
        sent("authorizationPolicies:\n  - { name: watch, namespace: x, action: AUDIT, rules: [ {} ] }\n");
    assert_eq!(resources.skipped, ["x/watch"]);
    assert!(resources.authorizations.is_empty());
}

fn workload_any(w: wl::Workload) -> Any {
    address_any(wl::address::Type::Workload(w))
}

fn good_workload() -> wl::Workload {
    wl::Workload {
        uid: "c//Pod/ns/a".to_owned(),
        name: "a".to_owned(),
        namespace: "ns".to_owned(),
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

fn address_error(w: wl::Workload) -> String {
    address_from_any("c//Pod/ns/a", &workload_any(w), &ConvertOptions::default())
        .expect_err("invalid workload")
        .to_string()
}

#[test]
fn bad_workloads_are_errors_naming_field_and_value() {
    let ok = address_from_any(
        "c//Pod/ns/a",
        &workload_any(good_workload()),
        &ConvertOptions::default(),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let message = address_error(wl::Workload {
        addresses: vec![vec![10, 0, 1]],
        ..good_workload()
    });
    assert!(
        message.contains("addresses[0]") && message.contains("0a, 00, 01"),
        "{message}"
    );
    let message = address_error(wl::Workload {
        tunnel_protocol: 7,
        ..good_workload()
    });
    assert!(
        message.contains("tunnel_protocol") && message.contains('7'),
        "{message}"
    );
    for bad_port in [0, 70_000] {
        let mut w = good_workload();
        w.services.insert(
            "ns/svc.ns.svc.cluster.local".to_owned(),
            wl::PortList {
                ports: vec![wl::Port {
                    service_port: 80,
                    target_port: bad_port,
                }],
            },
        );
        let message = address_error(w);
        assert!(
            message.contains("target_port") && message.contains(&bad_port.to_string()),
            "{message}"
        );
    }
    let message = address_error(wl::Workload {
        addresses: Vec::new(),
        ..good_workload()
    });
    assert!(message.contains("addresses"), "{message}");
    let garbage = Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(address_from_any("x", &garbage, &ConvertOptions::default()).is_err());
}

#[test]
fn bad_authorizations_are_errors_naming_field_and_value() {
    let base = sec::Authorization {
        name: "p".to_owned(),
        namespace: "ns".to_owned(),
        ..Default::default()
    };
    let error = |policy: sec::Authorization| {
        authorization_from_any("ns/p", &authorization_any(&policy))
            .expect_err("invalid policy")
            .to_string()
    };
    assert!(
        error(sec::Authorization {
            action: 5,
            ..base.clone()
        })
        .contains("action")
    );
    assert!(
        error(sec::Authorization {
            scope: 9,
            ..base.clone()
        })
        .contains("scope")
    );
    let with_match = |m: sec::Match| sec::Authorization {
        groups: vec![sec::Group {
            rules: vec![sec::Rules { matches: vec![m] }],
        }],
        ..base.clone()
    };
    let message = error(with_match(sec::Match {
        source_ips: vec![sec::Address {
            address: vec![10, 0, 0, 0],
            length: 33,
        }],
        ..Default::default()
    }));
    assert!(
        message.contains("groups[0].rules[0].matches[0].source_ips[0].length") && message.contains("33"),
        "{message}"
    );
    let message = error(with_match(sec::Match {
        destination_ports: vec![65_536],
        ..Default::default()
    }));
    assert!(
        message.contains("destination_ports[0]") && message.contains("65536"),
        "{message}"
    );
    let message = error(with_match(sec::Match {
        principals: vec![sec::StringMatch { match_type: None }],
        ..Default::default()
    }));
    assert!(message.contains("principals[0]"), "{message}");
    let wrong = Any {
        type_url: "type.googleapis.com/other".to_owned(),
        value: base.encode_to_vec(),
    };
    assert!(authorization_from_any("ns/p", &wrong).is_err());
}

#[test]
fn membership_changes_refill_selector_policies() {
    let strict = "peerAuthentications:\n  - { name: strict, namespace: x, mode: STRICT }\nworkloads:\n  - { name: a, namespace: x, node: n, addresses: [10.0.0.1] }\n";
    let (_, before) = sent(strict);
    let (_, after) = sent("workloads:\n  - { name: a, namespace: x, node: n, addresses: [10.0.0.1] }\n");
    let mut cache = Cache::default();
    let options = ConvertOptions::default();
    let apply = |cache: &mut Cache, resources: &Resources| {
        cache
            .apply(&response(ADDRESS_TYPE_URL, &resources.addresses), &options)
            .expect("addresses");
        cache
            .apply(&response(AUTHORIZATION_TYPE_URL, &resources.authorizations), &options)
            .expect("authorizations");
    };
    apply(&mut cache, &before);
    assert!(!decision(
        &cache.state("cluster.local"),
        "10.0.0.1",
        None,
        "10.0.0.2",
        80
    ));
    // The workload stops naming the static policy (which is still held): plaintext allowed.
    apply(&mut cache, &after);
    assert!(decision(
        &cache.state("cluster.local"),
        "10.0.0.1",
        None,
        "10.0.0.2",
        80
    ));
    apply(&mut cache, &before);
    assert!(!decision(
        &cache.state("cluster.local"),
        "10.0.0.1",
        None,
        "10.0.0.2",
        80
    ));
}

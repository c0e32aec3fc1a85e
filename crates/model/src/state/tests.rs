use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::config;

const WORKLOADS: &str = r#"
workloads:
  - { name: sleep, namespace: default, serviceAccount: sleep, node: node1, addresses: [10.1.0.2], labels: { app: sleep } }
  - { name: echo-1, namespace: default, node: node2, addresses: [10.1.0.3, "fd00::3"], labels: { app: echo, version: v1 } }
  - { name: echo-2, namespace: default, node: node1, addresses: [10.1.0.4], labels: { app: echo, version: v2 } }
  - { name: echo-other, namespace: other, node: node1, addresses: [10.2.0.3], labels: { app: echo } }
  - { name: db, namespace: default, node: node2, addresses: [10.1.0.9], labels: { app: db }, protocol: TCP }
services:
  - { name: echo, namespace: default, vips: [10.96.0.10], ports: [ { port: 80, targetPort: 8080 }, { port: 443 } ], selector: { app: echo } }
  - { name: echo-v2, namespace: default, vips: [10.96.0.11], ports: [ { port: 80 } ], selector: { app: echo, version: v2 } }
  - { name: nothing, namespace: default, vips: [10.96.0.12], ports: [ { port: 80 } ], selector: { app: nothing } }
  - { name: external, namespace: default, vips: [10.96.0.13], ports: [ { port: 80 } ] }
"#;

/// The shared workloads and services plus `extra` top-level sections.
fn state(extra: &str) -> State {
    let yaml = format!("{WORKLOADS}{extra}");
    State::from_config(config::parse(&yaml).expect("test config parses"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test socket address")
}

fn keys<'a>(workloads: impl IntoIterator<Item = &'a Arc<Workload>>) -> Vec<String> {
    workloads.into_iter().map(|w| w.key()).collect()
}

fn workload<'s>(state: &'s State, name: &str) -> &'s Arc<Workload> {
    state
        .workloads()
        .find(|w| w.name == name)
        .expect("test workload exists")
}

#[test]
fn workloads_by_ip_name_and_node() {
    let state = state("");
    assert_eq!(state.trust_domain(), "cluster.local");
    let lookup = |text: &str| state.workload_by_ip(ip(text)).map(|w| w.key());
    assert_eq!(lookup("10.1.0.2").as_deref(), Some("default/sleep"));
    assert_eq!(lookup("10.1.0.3").as_deref(), Some("default/echo-1"));
    assert_eq!(lookup("fd00::3").as_deref(), Some("default/echo-1"));
    assert_eq!(lookup("::ffff:10.1.0.2").as_deref(), Some("default/sleep"));
    assert_eq!(lookup("10.1.0.99"), None);
    assert_eq!(lookup("10.96.0.10"), None, "a VIP is not a workload");

    assert_eq!(
        keys(state.workloads()),
        [
            "default/db",
            "default/echo-1",
            "default/echo-2",
            "default/sleep",
            "other/echo-other"
        ]
    );
    assert_eq!(
        keys(state.workloads_on_node("node1")),
        ["default/echo-2", "default/sleep", "other/echo-other"]
    );
    assert_eq!(keys(state.workloads_on_node("node9")), Vec::<String>::new());
    assert_eq!(
        state
            .workload_by_name("other", "echo-other")
            .map(|w| w.key())
            .as_deref(),
        Some("other/echo-other")
    );
    assert!(state.workload_by_name("default", "echo-other").is_none());
    assert_eq!(workload(&state, "db").protocol, crate::Protocol::Tcp);
}

#[test]
fn services_by_vip_and_port() {
    let state = state("");
    let lookup = |text: &str| {
        state
            .service_by_vip(addr(text))
            .map(|(service, port)| (service.key(), port))
    };
    assert_eq!(lookup("10.96.0.10:80"), Some(("default/echo".into(), 8080)));
    assert_eq!(lookup("10.96.0.10:443"), Some(("default/echo".into(), 443)));
    assert_eq!(lookup("[::ffff:10.96.0.10]:80"), Some(("default/echo".into(), 8080)));
    assert_eq!(lookup("10.96.0.10:81"), None, "not a service port");
    assert_eq!(lookup("10.96.0.99:80"), None);
    assert_eq!(lookup("10.1.0.3:80"), None, "a workload IP is not a VIP");
    assert_eq!(
        state
            .service_by_hostname("echo-v2.default.svc.cluster.local")
            .map(|s| s.key())
            .as_deref(),
        Some("default/echo-v2")
    );
    assert_eq!(state.services().count(), 4);
}

#[test]
fn endpoints_follow_selector_within_namespace() {
    let state = state("");
    let endpoints = |name: &str| {
        let service = state.services().find(|s| s.name == name).expect("test service exists");
        keys(state.endpoints(service))
    };
    // echo-other has the labels but lives in another namespace.
    assert_eq!(endpoints("echo"), ["default/echo-1", "default/echo-2"]);
    assert_eq!(endpoints("echo-v2"), ["default/echo-2"]);
    assert_eq!(endpoints("nothing"), Vec::<String>::new());
    assert_eq!(endpoints("external"), Vec::<String>::new(), "no selector, no endpoints");
}

#[test]
fn state_serializes_without_indexes() {
    let state = state(EXTRA_POLICIES);
    let json = serde_json::to_value(&state).expect("serializes");
    assert_eq!(json["trustDomain"], "cluster.local");
    assert_eq!(json["workloads"][0]["name"], "db");
    assert_eq!(json["services"][0]["hostname"], "echo.default.svc.cluster.local");
    assert_eq!(json["authorizationPolicies"][0]["scope"], "global");
    assert!(json.get("workloadByIp").is_none());
}

const EXTRA_POLICIES: &str =
    "authorizationPolicies:\n  - { name: all, namespace: ambit-system, action: AUDIT, rules: [ {} ] }\n";

const SLEEP: &str = "cluster.local/ns/default/sa/sleep";
const OTHER: &str = "cluster.local/ns/other/sa/default";

/// A connection to echo-1 (10.1.0.3).
fn conn<'a>(principal: Option<&'a str>, source_ip: &str, port: u16) -> ConnectionInfo<'a> {
    ConnectionInfo {
        source_principal: principal,
        source_namespace: None,
        source_ip: ip(source_ip),
        destination_ip: ip("10.1.0.3"),
        destination_port: port,
    }
}

fn from_sleep() -> ConnectionInfo<'static> {
    conn(Some(SLEEP), "10.1.0.2", 8080)
}

fn from_other() -> ConnectionInfo<'static> {
    conn(Some(OTHER), "10.2.0.3", 8080)
}

fn plaintext() -> ConnectionInfo<'static> {
    conn(None, "192.168.0.7", 8080)
}

fn allowed(policy: Option<&str>) -> AuthzDecision {
    AuthzDecision {
        allowed: true,
        policy: policy.map(str::to_owned),
        audited: Vec::new(),
    }
}

fn denied(policy: Option<&str>) -> AuthzDecision {
    AuthzDecision {
        allowed: false,
        policy: policy.map(str::to_owned),
        audited: Vec::new(),
    }
}

/// Authorizes each connection to echo-1 under `policies` (YAML list items) and compares.
#[track_caller]
fn check(policies: &str, cases: &[(ConnectionInfo<'_>, AuthzDecision)]) {
    let state = state(&format!("authorizationPolicies:\n{policies}"));
    let echo = workload(&state, "echo-1");
    for (conn, expected) in cases {
        assert_eq!(
            &state.authorize(echo, conn),
            expected,
            "policies:\n{policies}\nconnection: {conn:?}"
        );
    }
}

#[test]
fn no_policy_allows() {
    let state = state("");
    let echo = workload(&state, "echo-1");
    assert_eq!(state.authorize(echo, &from_sleep()), allowed(None));
    assert_eq!(state.authorize(echo, &plaintext()), allowed(None));
}

#[test]
fn allow_without_rules_allows_nothing() {
    check(
        "  - { name: nothing, namespace: default, action: ALLOW }\n",
        &[(from_sleep(), denied(None)), (plaintext(), denied(None))],
    );
    check(
        "  - { name: all, namespace: default, action: ALLOW, rules: [ {} ] }\n",
        &[
            (from_sleep(), allowed(Some("default/all"))),
            (plaintext(), allowed(Some("default/all"))),
        ],
    );
}

#[test]
fn deny_with_empty_rules_never_matches_and_empty_rule_matches_all() {
    check(
        "  - { name: none, namespace: default, action: DENY, rules: [] }\n",
        &[(from_sleep(), allowed(None))],
    );
    check(
        "  - { name: all, namespace: default, action: DENY, rules: [ {} ] }\n",
        &[
            (from_sleep(), denied(Some("default/all"))),
            (plaintext(), denied(Some("default/all"))),
        ],
    );
}

#[test]
fn deny_beats_allow() {
    check(
        concat!(
            "  - { name: allow-all, namespace: default, rules: [ {} ] }\n",
            "  - { name: deny-sleep, namespace: default, action: DENY, rules: [ { from: [ { principals: [\"cluster.local/ns/default/sa/sleep\"] } ] } ] }\n",
        ),
        &[
            (from_sleep(), denied(Some("default/deny-sleep"))),
            (from_other(), allowed(Some("default/allow-all"))),
        ],
    );
}

#[test]
fn an_allow_policy_makes_unmatched_connections_denied() {
    check(
        "  - { name: only-sleep, namespace: default, rules: [ { from: [ { principals: [\"cluster.local/ns/default/sa/sleep\"] } ] } ] }\n",
        &[
            (from_sleep(), allowed(Some("default/only-sleep"))),
            (from_other(), denied(None)),
            (plaintext(), denied(None)),
        ],
    );
}

#[test]
fn audit_is_recorded_without_changing_the_decision() {
    let state = state(concat!(
        "authorizationPolicies:\n",
        "  - { name: audit-sleep, namespace: default, action: AUDIT, rules: [ { from: [ { principals: [\"*/sa/sleep\"] } ] } ] }\n",
        "  - { name: audit-all, namespace: ambit-system, action: AUDIT, rules: [ {} ] }\n",
        "  - { name: deny-other, namespace: default, action: DENY, rules: [ { from: [ { namespaces: [other] } ] } ] }\n",
    ));
    let echo = workload(&state, "echo-1");
    // AUDIT is not ALLOW: with no ALLOW policy the connection is allowed.
    assert_eq!(
        state.authorize(echo, &from_sleep()),
        AuthzDecision {
            allowed: true,
            policy: None,
            audited: vec!["ambit-system/audit-all".into(), "default/audit-sleep".into()],
        }
    );
    assert_eq!(
        state.authorize(echo, &from_other()),
        AuthzDecision {
            allowed: false,
            policy: Some("default/deny-other".into()),
            audited: vec!["ambit-system/audit-all".into()],
        }
    );
}

#[test]
fn principal_patterns() {
    for (pattern, sleep_allowed) in [
        ("cluster.local/ns/default/sa/sleep", true),
        ("cluster.local/ns/default/sa/slee", false),
        ("cluster.local/ns/default/*", true),
        ("cluster.local/ns/other/*", false),
        ("*/sa/sleep", true),
        ("*/sa/echo", false),
        ("*", true),
    ] {
        let policy = format!(
            "  - {{ name: p, namespace: default, rules: [ {{ from: [ {{ principals: [\"{pattern}\"] }} ] }} ] }}\n"
        );
        let expected = if sleep_allowed {
            allowed(Some("default/p"))
        } else {
            denied(None)
        };
        // Plaintext has no principal: a principals rule never matches it, not even "*".
        check(&policy, &[(from_sleep(), expected), (plaintext(), denied(None))]);
    }
}

#[test]
fn not_principals() {
    check(
        "  - { name: p, namespace: default, rules: [ { from: [ { notPrincipals: [\"*/sa/sleep\"] } ] } ] }\n",
        &[
            (from_sleep(), denied(None)),
            (from_other(), allowed(Some("default/p"))),
            // Nothing to exclude on a plaintext peer, as in Istio's ztunnel.
            (plaintext(), allowed(Some("default/p"))),
        ],
    );
    // Istio's "require mTLS" idiom: deny whoever is not authenticated.
    check(
        "  - { name: require-mtls, namespace: default, action: DENY, rules: [ { from: [ { notPrincipals: [\"*\"] } ] } ] }\n",
        &[
            (from_sleep(), allowed(None)),
            (plaintext(), denied(Some("default/require-mtls"))),
        ],
    );
}

#[test]
fn namespaces_and_not_namespaces() {
    check(
        "  - { name: p, namespace: default, rules: [ { from: [ { namespaces: [\"def*\"] } ] } ] }\n",
        &[
            (from_sleep(), allowed(Some("default/p"))),
            (from_other(), denied(None)),
            (plaintext(), denied(None)),
            (
                ConnectionInfo {
                    source_namespace: Some("default"),
                    ..from_other()
                },
                allowed(Some("default/p")),
            ),
        ],
    );
    check(
        "  - { name: p, namespace: default, rules: [ { from: [ { notNamespaces: [other] } ] } ] }\n",
        &[(from_sleep(), allowed(Some("default/p"))), (from_other(), denied(None))],
    );
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    check(
        "  - { name: p, namespace: default, rules: [ { from: [ { ipBlocks: [10.1.0.0/16, 192.168.0.7] } ] } ] }\n",
        &[
            (from_sleep(), allowed(Some("default/p"))),
            (from_other(), denied(None)),
            (plaintext(), allowed(Some("default/p"))),
            (conn(Some(SLEEP), "::ffff:10.1.0.2", 8080), allowed(Some("default/p"))),
        ],
    );
    check(
        "  - { name: p, namespace: default, rules: [ { from: [ { ipBlocks: [10.0.0.0/8], notIpBlocks: [10.2.0.0/16] } ] } ] }\n",
        &[
            (from_sleep(), allowed(Some("default/p"))),
            (from_other(), denied(None)),
            (plaintext(), denied(None)),
        ],
    );
}

#[test]
fn ports_and_not_ports() {
    check(
        "  - { name: p, namespace: default, rules: [ { to: [ { ports: [8080, 9090] } ] } ] }\n",
        &[
            (conn(Some(SLEEP), "10.1.0.2", 8080), allowed(Some("default/p"))),
            (conn(Some(SLEEP), "10.1.0.2", 9090), allowed(Some("default/p"))),
            (conn(Some(SLEEP), "10.1.0.2", 7070), denied(None)),
        ],
    );
    check(
        "  - { name: p, namespace: default, action: DENY, rules: [ { to: [ { notPorts: [8080] } ] } ] }\n",
        &[
            (conn(None, "10.1.0.2", 8080), allowed(None)),
            (conn(None, "10.1.0.2", 22), denied(Some("default/p"))),
        ],
    );
}

#[test]
fn rule_parts_are_anded_and_entries_ored() {
    let policy = concat!(
        "  - name: p\n    namespace: default\n    rules:\n",
        "      - from: [ { principals: [\"*/sa/sleep\"] }, { ipBlocks: [192.168.0.0/16] } ]\n",
        "        to: [ { ports: [8080] } ]\n",
        "        when: [ { key: destination.ip, values: [10.1.0.0/16] } ]\n",
    );
    check(
        policy,
        &[
            (from_sleep(), allowed(Some("default/p"))),
            (plaintext(), allowed(Some("default/p"))),
            (conn(Some(SLEEP), "10.1.0.2", 9090), denied(None)),
            (from_other(), denied(None)),
        ],
    );
    let other_destination = ConnectionInfo {
        destination_ip: ip("10.9.0.1"),
        ..from_sleep()
    };
    check(policy, &[(other_destination, denied(None))]);
}

#[test]
fn when_conditions_match_like_sources() {
    check(
        concat!(
            "  - name: p\n    namespace: default\n    rules:\n",
            "      - when:\n",
            "          - { key: source.principal, values: [\"*/sa/sleep\"] }\n",
            "          - { key: destination.port, notValues: [\"9090\"] }\n",
        ),
        &[
            (from_sleep(), allowed(Some("default/p"))),
            (conn(Some(SLEEP), "10.1.0.2", 9090), denied(None)),
            (from_other(), denied(None)),
        ],
    );
}

#[test]
fn scope_global_namespace_and_selector() {
    let state = state(concat!(
        "authorizationPolicies:\n",
        "  - { name: global-deny-db-port, namespace: ambit-system, action: DENY, rules: [ { to: [ { ports: [5432] } ] } ] }\n",
        "  - { name: other-ns-only, namespace: other, rules: [ { from: [ { principals: [nobody] } ] } ] }\n",
        "  - { name: echo-only, namespace: default, selector: { app: echo }, rules: [ { from: [ { namespaces: [default] } ] } ] }\n",
        "  - { name: root-selects-v2, namespace: ambit-system, selector: { version: v2 }, action: DENY, rules: [ {} ] }\n",
    ));
    let at = |name: &str, conn: ConnectionInfo<'_>| state.authorize(workload(&state, name), &conn);
    let to = |port: u16| conn(Some(SLEEP), "10.1.0.2", port);

    // Global applies to every workload.
    assert_eq!(at("sleep", to(5432)), denied(Some("ambit-system/global-deny-db-port")));
    assert_eq!(
        at("echo-other", to(5432)),
        denied(Some("ambit-system/global-deny-db-port"))
    );
    // Namespace scope: `other-ns-only` governs echo-other but not default workloads.
    assert_eq!(at("echo-other", to(80)), denied(None));
    assert_eq!(at("sleep", to(80)), allowed(None));
    // Selector scope: echo-only governs echo-1 but not sleep.
    assert_eq!(at("echo-1", to(80)), allowed(Some("default/echo-only")));
    assert_eq!(at("echo-1", from_other()), denied(None));
    assert_eq!(at("sleep", from_other()), allowed(None));
    // A selector in the root namespace reaches matching workloads of every namespace.
    assert_eq!(at("echo-2", to(80)), denied(Some("ambit-system/root-selects-v2")));

    let governing: Vec<String> = state
        .policies_for(workload(&state, "echo-1"))
        .map(|p| p.key())
        .collect();
    assert_eq!(governing, ["ambit-system/global-deny-db-port", "default/echo-only"]);
    assert_eq!(state.policies().count(), 4);
}

#[test]
fn first_matching_policy_in_name_order_is_reported() {
    check(
        concat!(
            "  - { name: b-allow, namespace: default, rules: [ {} ] }\n",
            "  - { name: a-allow, namespace: default, rules: [ {} ] }\n",
        ),
        &[(from_sleep(), allowed(Some("default/a-allow")))],
    );
}

/// mTLS mode of workload `name` on `port` under `peer_authentications` (YAML list items).
fn mode(extra: &str, name: &str, port: u16) -> MtlsMode {
    let state = state(extra);
    state.mtls_mode(workload(&state, name), port)
}

#[test]
fn mtls_defaults_to_mesh_defaults() {
    assert_eq!(mode("", "echo-1", 8080), MtlsMode::Permissive);
    assert_eq!(
        mode("meshDefaults: { peerAuthentication: STRICT }\n", "echo-1", 8080),
        MtlsMode::Strict
    );
}

#[test]
fn mtls_most_specific_scope_wins() {
    let policies = concat!(
        "meshDefaults: { peerAuthentication: DISABLE }\n",
        "peerAuthentications:\n",
        "  - { name: mesh, namespace: ambit-system, mode: STRICT }\n",
        "  - { name: ns, namespace: default, mode: PERMISSIVE }\n",
        "  - { name: echo, namespace: default, selector: { app: echo }, mode: STRICT, portLevelMtls: { 8080: PERMISSIVE } }\n",
        "  - { name: elsewhere, namespace: other, selector: { app: sleep }, mode: DISABLE }\n",
    );
    assert_eq!(mode(policies, "echo-1", 9090), MtlsMode::Strict, "workload");
    assert_eq!(mode(policies, "echo-1", 8080), MtlsMode::Permissive, "port level");
    assert_eq!(mode(policies, "sleep", 8080), MtlsMode::Permissive, "namespace");
    assert_eq!(mode(policies, "echo-other", 8080), MtlsMode::Strict, "mesh");
}

#[test]
fn mtls_unset_inherits() {
    let policies = concat!(
        "peerAuthentications:\n",
        "  - { name: mesh, namespace: ambit-system, mode: STRICT }\n",
        "  - { name: ns, namespace: default }\n",
        "  - { name: echo, namespace: default, selector: { app: echo }, mode: UNSET, portLevelMtls: { 8080: DISABLE, 9090: UNSET } }\n",
    );
    assert_eq!(mode(policies, "echo-1", 8080), MtlsMode::Disable);
    assert_eq!(mode(policies, "echo-1", 9090), MtlsMode::Strict);
    assert_eq!(mode(policies, "sleep", 80), MtlsMode::Strict);
}

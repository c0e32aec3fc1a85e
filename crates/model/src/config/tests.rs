use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::*;
use crate::authorization::Action;
use crate::workload::Protocol;

/// The example of the file format, as documented.
pub(crate) const EXAMPLE: &str = r#"
trustDomain: cluster.local
meshDefaults: { peerAuthentication: PERMISSIVE }
workloads:
  - name: client-7d9
    namespace: default
    serviceAccount: sleep
    node: node1
    addresses: [10.1.0.2]
    labels: { app: sleep }
    protocol: HBONE
    workloadName: sleep
    netns: /run/netns/pod-a
  - name: echo-1
    namespace: default
    node: node2
    addresses: [10.1.0.3, "fd00::3"]
    labels: { app: echo, version: 1 }
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    vips: [10.96.0.10]
    ports: [ { port: 80, targetPort: 8080 } ]
    selector: { app: echo }
authorizationPolicies:
  - name: deny-sleep
    namespace: default
    selector: { app: echo }
    action: DENY
    rules:
      - from: [ { principals: ["cluster.local/ns/default/sa/sleep"], notPrincipals: [], namespaces: [], notNamespaces: [], ipBlocks: ["10.0.0.0/8"], notIpBlocks: [] } ]
        to:   [ { ports: [8080], notPorts: [] } ]
peerAuthentications:
  - name: strict
    namespace: default
    selector: { app: echo }
    mode: STRICT
    portLevelMtls: { 8080: PERMISSIVE }
"#;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

use crate::workload::Labels;

#[test]
fn parses_the_documented_example() {
    let config = parse(EXAMPLE).expect("example parses");
    assert_eq!(config.trust_domain, "cluster.local");
    assert_eq!(config.mesh_defaults.peer_authentication, MtlsMode::Permissive);

    let client = &config.workloads[0];
    assert_eq!(
        client,
        &Workload {
            name: "client-7d9".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
            node: "node1".into(),
            addresses: vec![ip("10.1.0.2")],
            labels: labels(&[("app", "sleep")]),
            protocol: Protocol::Hbone,
            workload_name: "sleep".into(),
            netns: Some(PathBuf::from("/run/netns/pod-a")),
            trust_domain: "cluster.local".into(),
            services: BTreeMap::new(),
            waypoint: None,
        }
    );
    assert_eq!(client.principal(), "cluster.local/ns/default/sa/sleep");
    assert_eq!(client.spiffe_id(), "spiffe://cluster.local/ns/default/sa/sleep");
    assert_eq!(client.key(), "default/client-7d9");

    let echo = &config.workloads[1];
    assert_eq!(echo.service_account, "default");
    assert_eq!(echo.workload_name, "echo-1");
    assert_eq!(echo.addresses, vec![ip("10.1.0.3"), ip("fd00::3")]);
    assert_eq!(echo.labels, labels(&[("app", "echo"), ("version", "1")]));
    assert_eq!(echo.netns, None);

    assert_eq!(
        config.services,
        vec![Service {
            name: "echo".into(),
            namespace: "default".into(),
            hostname: "echo.default.svc.cluster.local".into(),
            vips: vec![ip("10.96.0.10")],
            ports: vec![ServicePort {
                port: 80,
                target_port: 8080
            }],
            selector: labels(&[("app", "echo")]),
            waypoint: None,
        }]
    );

    assert_eq!(
        config.authorization_policies,
        vec![AuthorizationPolicy {
            name: "deny-sleep".into(),
            namespace: "default".into(),
            scope: PolicyScope::WorkloadSelector(labels(&[("app", "echo")])),
            action: Action::Deny,
            rules: vec![Rule {
                clauses: vec![
                    Clause {
                        matches: vec![Match {
                            principals: vec![StringMatch::Exact("cluster.local/ns/default/sa/sleep".into())],
                            source_ips: vec!["10.0.0.0/8".parse().expect("test CIDR")],
                            ..Match::default()
                        }],
                    },
                    Clause {
                        matches: vec![Match {
                            destination_ports: vec![8080],
                            ..Match::default()
                        }],
                    },
                ],
            }],
        }]
    );

    assert_eq!(
        config.peer_authentications,
        vec![PeerAuthentication {
            name: "strict".into(),
            namespace: "default".into(),
            selector: Some(labels(&[("app", "echo")])),
            mode: Some(MtlsMode::Strict),
            port_level_mtls: BTreeMap::from([(8080, Some(MtlsMode::Permissive))]),
        }]
    );
}

#[test]
fn defaults_fill_optional_fields() {
    let config = parse(
        r#"
trustDomain: example.org
workloads:
  - { name: a, namespace: ns1, node: n1, addresses: [10.0.0.1] }
services:
  - { name: web, namespace: ns1, ports: [ { port: 80 } ] }
authorizationPolicies:
  - { name: p, namespace: ns1 }
peerAuthentications:
  - { name: pa, namespace: ns1 }
"#,
    )
    .expect("parses");
    let workload = &config.workloads[0];
    assert_eq!(workload.service_account, "default");
    assert_eq!(workload.protocol, Protocol::Hbone);
    assert_eq!(workload.workload_name, "a");
    assert_eq!(workload.trust_domain, "example.org");
    assert_eq!(workload.principal(), "example.org/ns/ns1/sa/default");
    assert!(workload.labels.is_empty());

    let service = &config.services[0];
    assert_eq!(service.hostname, "web.ns1.svc.cluster.local");
    assert_eq!(
        service.ports,
        vec![ServicePort {
            port: 80,
            target_port: 80
        }]
    );
    assert!(service.vips.is_empty());
    assert!(service.selector.is_empty());

    let policy = &config.authorization_policies[0];
    assert_eq!(policy.action, Action::Allow);
    assert_eq!(policy.scope, PolicyScope::Namespace);
    assert!(policy.rules.is_empty());

    assert_eq!(config.peer_authentications[0].mode, None);
    assert_eq!(config.mesh_defaults.peer_authentication, MtlsMode::Permissive);
}

#[test]
fn empty_document_is_an_empty_mesh() {
    for yaml in ["", "# nothing yet\n", "workloads:\nservices: []\n"] {
        let config = parse(yaml).expect("parses");
        assert_eq!(config, LocalConfig::default(), "{yaml:?}");
    }
    assert_eq!(
        "meshDefaults: { peerAuthentication: STRICT }"
            .parse::<LocalConfig>()
            .expect("parses")
            .mesh_defaults
            .peer_authentication,
        MtlsMode::Strict
    );
}

#[test]
fn policy_scope_follows_namespace_and_selector() {
    let config = parse(
        r#"
authorizationPolicies:
  - { name: global, namespace: ambit-system }
  - { name: root-selected, namespace: ambit-system, selector: { app: a } }
  - { name: ns-wide, namespace: default }
  - { name: empty-selector, namespace: default, selector: {} }
"#,
    )
    .expect("parses");
    let scopes: Vec<_> = config.authorization_policies.iter().map(|p| p.scope.clone()).collect();
    assert_eq!(
        scopes,
        vec![
            PolicyScope::Global,
            PolicyScope::WorkloadSelector(labels(&[("app", "a")])),
            PolicyScope::Namespace,
            PolicyScope::WorkloadSelector(Labels::new()),
        ]
    );
}

#[test]
fn when_conditions_become_clauses() {
    let config = parse(
        r#"
authorizationPolicies:
  - name: p
    namespace: default
    rules:
      - when:
          - { key: source.ip, values: [10.0.0.0/8], notValues: [10.1.0.0/16] }
          - { key: destination.port, values: ["8080"] }
          - { key: source.principal, notValues: ["*/sa/bad"] }
          - { key: source.namespace, values: ["prod-*"] }
          - { key: destination.ip, values: [10.96.0.10] }
      - {}
"#,
    )
    .expect("parses");
    let rules = &config.authorization_policies[0].rules;
    assert_eq!(rules.len(), 2);
    assert!(rules[1].clauses.is_empty(), "`{{}}` is a rule with no clause");
    let matches: Vec<&Match> = rules[0]
        .clauses
        .iter()
        .map(|c| {
            assert_eq!(c.matches.len(), 1);
            &c.matches[0]
        })
        .collect();
    assert_eq!(
        matches[0].source_ips,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(
        matches[0].not_source_ips,
        vec!["10.1.0.0/16".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(matches[1].destination_ports, vec![8080]);
    assert_eq!(matches[2].not_principals, vec![StringMatch::Suffix("/sa/bad".into())]);
    assert_eq!(matches[3].namespaces, vec![StringMatch::Prefix("prod-".into())]);
    assert_eq!(
        matches[4].destination_ips,
        vec![ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)))]
    );
}

#[test]
fn port_level_mtls_accepts_istio_nested_form() {
    let config = parse(
        r#"
peerAuthentications:
  - name: pa
    namespace: default
    selector: { app: a }
    mode: UNSET
    portLevelMtls:
      8080: { mode: STRICT }
      "9090": DISABLE
      9091: UNSET
"#,
    )
    .expect("parses");
    assert_eq!(
        config.peer_authentications[0].port_level_mtls,
        BTreeMap::from([
            (8080, Some(MtlsMode::Strict)),
            (9090, Some(MtlsMode::Disable)),
            (9091, None),
        ])
    );
}

#[test]
fn serializes_for_config_dump() {
    let config = parse(EXAMPLE).expect("example parses");
    let json = serde_json::to_value(&config).expect("serializes");
    assert_eq!(json["workloads"][0]["serviceAccount"], "sleep");
    assert_eq!(json["workloads"][0]["protocol"], "HBONE");
    assert_eq!(json["services"][0]["ports"][0]["targetPort"], 8080);
    assert_eq!(json["authorizationPolicies"][0]["action"], "DENY");
    assert_eq!(
        json["authorizationPolicies"][0]["rules"][0]["clauses"][0]["matches"][0]["principals"][0],
        "cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(json["peerAuthentications"][0]["portLevelMtls"]["8080"], "PERMISSIVE");
}

/// A workload list entry with `extra` lines appended (indented as workload fields).
fn workload_with(extra: &str) -> String {
    format!("workloads:\n  - name: a\n    namespace: default\n    node: n1\n{extra}",)
}

#[track_caller]
fn assert_error(yaml: &str, expected: &str) {
    match parse(yaml) {
        Ok(config) => panic!("expected error {expected:?}, parsed {config:?}"),
        Err(error) => assert_eq!(error.to_string(), expected, "{error:?}"),
    }
}

#[test]
fn bad_ip_names_field_value_and_line() {
    assert_error(
        &workload_with("    addresses: [10.0.0.1, 10.0.0.x]\n"),
        "line 5 column 27: workloads[0].addresses[1]: \"10.0.0.x\" is not an IP address",
    );
    assert_error(
        "services:\n  - { name: s, namespace: default, vips: [300.1.1.1] }\n",
        "line 2 column 43: services[0].vips[0]: \"300.1.1.1\" is not an IP address",
    );
}

#[test]
fn bad_cidr_names_field_value_and_line() {
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules:\n      - from:\n          - notIpBlocks: [10.0.0.0/33]\n",
        "line 6 column 27: authorizationPolicies[0].rules[0].from[0].notIpBlocks[0]: \
         \"10.0.0.0/33\" is not a CIDR block or IP address",
    );
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules:\n      - when: [ { key: remote.ip, values: [nope] } ]\n",
        "line 5 column 44: authorizationPolicies[0].rules[0].when[0].values[0]: \
         \"nope\" is not a CIDR block or IP address",
    );
}

#[test]
fn unknown_field_is_named() {
    assert_error(
        &workload_with("    addresses: [10.0.0.1]\n    serviceacount: sleep\n"),
        "line 6 column 5: workloads[0]: unknown field `serviceacount`, expected one of `name`, \
         `namespace`, `serviceAccount`, `node`, `addresses`, `labels`, `protocol`, \
         `workloadName`, `netns`",
    );
    assert_error(
        "trustdomain: x\n",
        "line 1 column 1: unknown field `trustdomain`, expected one of `trustDomain`, \
         `meshDefaults`, `workloads`, `services`, `authorizationPolicies`, `peerAuthentications`",
    );
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules: [ { to: [ { methods: [GET] } ] } ]\n",
        "line 4 column 24: authorizationPolicies[0].rules[0].to[0]: unknown field `methods`, \
         expected `ports` or `notPorts`",
    );
}

#[test]
fn unknown_enum_value_is_named() {
    assert_error(
        &workload_with("    addresses: [10.0.0.1]\n    protocol: UDP\n"),
        "line 6 column 15: workloads[0].protocol: unknown variant `UDP`, expected `HBONE` or `TCP`",
    );
    assert_error(
        "authorizationPolicies:\n  - { name: p, namespace: default, action: PERMIT }\n",
        "line 2 column 44: authorizationPolicies[0].action: unknown variant `PERMIT`, \
         expected one of `ALLOW`, `DENY`, `AUDIT`",
    );
    assert_error(
        "peerAuthentications:\n  - { name: p, namespace: default, mode: strict }\n",
        "line 2 column 42: peerAuthentications[0].mode: unknown variant `strict`, \
         expected one of `UNSET`, `STRICT`, `PERMISSIVE`, `DISABLE`",
    );
    assert_error(
        "meshDefaults: { peerAuthentication: UNSET }\n",
        "line 1 column 37: meshDefaults.peerAuthentication: unknown variant `UNSET`, \
         expected one of `STRICT`, `PERMISSIVE`, `DISABLE`",
    );
}

#[test]
fn missing_required_field_is_named() {
    assert_error(
        "workloads:\n  - namespace: default\n    node: n1\n    addresses: [10.0.0.1]\n",
        "line 2 column 5: workloads[0]: missing field `name`",
    );
    assert_error(
        &workload_with(""),
        "line 2 column 5: workloads[0]: missing field `addresses`",
    );
    assert_error(
        "services:\n  - { name: s, namespace: default, ports: [ { targetPort: 80 } ] }\n",
        "line 2 column 45: services[0].ports[0]: missing field `port`",
    );
}

#[test]
fn out_of_range_ports_are_refused() {
    for (port, shown) in [("0", "0"), ("65536", "65536"), ("-1", "-1"), ("\"http\"", "\"http\"")] {
        assert_error(
            &format!("services:\n  - name: s\n    namespace: default\n    ports: [ {{ port: {port} }} ]\n"),
            &format!("line 4 column 22: services[0].ports[0].port: {shown} is not a port number (1-65535)"),
        );
    }
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules: [ { to: [ { notPorts: [70000] } ] } ]\n",
        "line 4 column 35: authorizationPolicies[0].rules[0].to[0].notPorts[0]: \
         70000 is not a port number (1-65535)",
    );
    assert_error(
        "peerAuthentications:\n  - { name: p, namespace: default, portLevelMtls: { 0: STRICT } }\n",
        "line 2 column 53: peerAuthentications[0].portLevelMtls: 0 is not a port number (1-65535)",
    );
}

#[test]
fn duplicates_are_refused_with_both_places() {
    assert_error(
        "workloads:\n  - { name: a, namespace: default, node: n1, addresses: [10.0.0.1] }\n  - { name: b, namespace: default, node: n1, addresses: [10.0.0.2, 10.0.0.1] }\n",
        "line 3 column 68: workloads[1].addresses[1]: 10.0.0.1 is already an address of \
         workload \"default/a\" at workloads[0].addresses[0]",
    );
    assert_error(
        "workloads:\n  - { name: a, namespace: default, node: n1, addresses: [10.0.0.1, 10.0.0.1] }\n",
        "line 2 column 68: workloads[0].addresses[1]: 10.0.0.1 is already an address of \
         workload \"default/a\" at workloads[0].addresses[0]",
    );
    assert_error(
        "workloads:\n  - { name: a, namespace: default, node: n1, addresses: [10.0.0.1] }\n  - { name: a, namespace: default, node: n2, addresses: [10.0.0.2] }\n",
        "line 3 column 13: workloads[1].name: workload \"default/a\" is already defined at workloads[0]",
    );
    // Same name in another namespace is fine.
    parse("workloads:\n  - { name: a, namespace: default, node: n1, addresses: [10.0.0.1] }\n  - { name: a, namespace: other, node: n2, addresses: [10.0.0.2] }\n")
        .expect("same name, other namespace");
    assert_error(
        "workloads:\n  - { name: a, namespace: default, node: n1, addresses: [10.0.0.1] }\nservices:\n  - { name: s, namespace: default, vips: [\"::ffff:10.0.0.1\"] }\n",
        "line 4 column 43: services[0].vips[0]: ::ffff:10.0.0.1 is already an address of \
         workload \"default/a\" at workloads[0].addresses[0]",
    );
    assert_error(
        "services:\n  - name: s\n    namespace: default\n    ports:\n      - { port: 80 }\n      - { port: 80, targetPort: 81 }\n",
        "line 6 column 17: services[0].ports[1].port: port 80 is already listed at services[0].ports[0]",
    );
    assert_error(
        "services:\n  - { name: s, namespace: default }\n  - { name: t, namespace: default, hostname: s.default.svc.cluster.local }\n",
        "line 3 column 46: services[1].hostname: hostname \"s.default.svc.cluster.local\" is \
         already used by services[0]",
    );
    assert_error(
        "peerAuthentications:\n  - { name: p, namespace: default }\n  - { name: p, namespace: default, mode: STRICT }\n",
        "line 3 column 13: peerAuthentications[1].name: peer authentication \"default/p\" is \
         already defined at peerAuthentications[0]",
    );
}

#[test]
fn other_semantic_errors_name_field_and_value() {
    assert_error(
        &workload_with("    addresses: []\n"),
        "line 5 column 16: workloads[0].addresses: workload \"default/a\" needs at least one address",
    );
    assert_error(
        &workload_with("    addresses: [10.0.0.1]\n    netns: pod-a\n"),
        "line 6 column 12: workloads[0].netns: \"pod-a\" is not an absolute path",
    );
    assert_error(
        "workloads:\n  - { name: a, namespace: Default, node: n1, addresses: [10.0.0.1] }\n",
        "line 2 column 27: workloads[0].namespace: \"Default\" is not a valid namespace: use at \
         most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    );
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules:\n      - when:\n          - key: request.headers[x]\n            values: [a]\n",
        "line 6 column 18: authorizationPolicies[0].rules[0].when[0].key: \"request.headers[x]\" \
         is not an L4 condition key; expected one of source.ip, remote.ip, source.principal, \
         source.namespace, destination.ip, destination.port",
    );
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules:\n      - when:\n          - key: source.ip\n",
        "line 6 column 13: authorizationPolicies[0].rules[0].when[0]: condition on \"source.ip\" \
         needs values or notValues",
    );
    assert_error(
        "authorizationPolicies:\n  - name: p\n    namespace: default\n    rules: [ { from: [ { principals: [\"\"] } ] } ]\n",
        "line 4 column 39: authorizationPolicies[0].rules[0].from[0].principals[0]: an empty \
         pattern matches nothing; use \"*\" for any value",
    );
}

#[test]
fn syntax_and_type_errors_carry_location() {
    assert_error(
        "workloads: [\n",
        "line 2 column 1: did not find expected node content, while parsing a flow node",
    );
    assert_error(
        "workloads:\n  - name: a\n   namespace: default\n",
        "line 2 column 5: workloads[0]: missing field `namespace`",
    );
    assert_error(
        "[1, 2]\n",
        "line 1 column 1: invalid type: sequence, expected a mapping of trustDomain, meshDefaults, workloads, services, authorizationPolicies, peerAuthentications",
    );
    assert_error(
        &workload_with("    addresses: 10.0.0.1\n"),
        "line 5 column 16: workloads[0].addresses: invalid type: string \"10.0.0.1\", expected a sequence",
    );
    let error = parse("workloads: [\n").expect_err("syntax error");
    assert!(matches!(error, ConfigError::Parse { .. }));
    assert_eq!(error.location(), Some(Location { line: 2, column: 1 }));
    assert_eq!(error.path(), "");

    let error = parse(&workload_with("    addresses: []\n")).expect_err("no address");
    assert!(matches!(error, ConfigError::Invalid { .. }));
    assert_eq!(error.path(), "workloads[0].addresses");
    assert_eq!(error.reason(), "workload \"default/a\" needs at least one address");
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    let nested = "[".repeat(10_000);
    assert!(parse(&nested).is_err());
    let billion_laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    assert!(parse(billion_laughs).is_err());
    assert!(parse("\u{0}\u{1}").is_err());
    assert!(parse("a: b\n---\nc: d\n").is_err());
}

#[test]
fn the_shipped_example_parses() {
    let text = include_str!("../../../../examples/ztunnel-local.yaml");
    let config = parse(text).expect("examples/ztunnel-local.yaml must stay valid");
    assert_eq!(config.workloads.len(), 2);
    assert_eq!(config.authorization_policies.len(), 1);
}

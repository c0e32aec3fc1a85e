use super::*;

fn parse(yaml: &str) -> AuthorizationPolicy {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(policy: &AuthorizationPolicy) -> String {
    policy.validate().err().map(|e| e.to_string()).unwrap_or_default()
}

const VALID: &str = r#"
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector:
    matchLabels: {app: api}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
        notIpBlocks: ["10.0.0.0/8", "fd00::1"]
    to:
    - operation:
        ports: ["8080"]
        methods: [GET]
    when:
    - key: request.headers[x-user]
      values: [alice]
    - key: destination.port
      notValues: ["9090"]
"#;

#[test]
fn valid_policy_round_trips() {
    let policy = parse(VALID);
    assert_eq!(policy.validate(), Ok(()));
    assert_eq!(policy.spec.rules[0].to[0].operation.l7_fields(), vec!["methods"]);
    let yaml = serde_norway::to_string(&policy).unwrap_or_default();
    assert_eq!(parse(&yaml), policy);
    let json = serde_json::to_string(&policy).unwrap_or_default();
    assert_eq!(serde_json::from_str::<AuthorizationPolicy>(&json).ok(), Some(policy));
}

#[test]
fn action_defaults_to_allow_and_empty_allow_is_valid() {
    let policy =
        parse("apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {}");
    assert_eq!(policy.spec.action, Action::Allow);
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn bad_ports_name_their_path() {
    let mut policy = parse(VALID);
    policy.spec.rules[0].to[0].operation.ports = vec!["80".into(), "70000".into()];
    assert_eq!(
        errors(&policy),
        r#"spec.rules[0].to[0].operation.ports[1]: "70000" is not a port (1-65535)"#
    );
}

#[test]
fn bad_ip_blocks_and_empty_patterns() {
    let mut policy = parse(VALID);
    let source = &mut policy.spec.rules[0].from[0].source;
    source.ip_blocks = vec!["10.0.0.0/33".into()];
    source.namespaces = vec![String::new()];
    assert_eq!(
        errors(&policy),
        "spec.rules[0].from[0].source.namespaces[0]: \"\" must not be empty; \
         spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is neither an IP address nor a CIDR block"
    );
}

#[test]
fn empty_source_and_operation_are_refused() {
    let mut policy = parse(VALID);
    policy.spec.rules[0].from[0].source = Source::default();
    policy.spec.rules[0].to[0].operation = Operation::default();
    assert_eq!(
        errors(&policy),
        "spec.rules[0].from[0].source: a source needs at least one field; \
         spec.rules[0].to[0].operation: an operation needs at least one field"
    );
}

#[test]
fn conditions_need_known_keys_values_and_l4_syntax() {
    let mut policy = parse(VALID);
    policy.spec.rules[0].when = vec![
        Condition {
            key: "source.ips".into(),
            values: vec!["1.2.3.4".into()],
            not_values: vec![],
        },
        Condition {
            key: "source.ip".into(),
            values: vec!["1.2.3".into()],
            not_values: vec![],
        },
        Condition {
            key: "destination.port".into(),
            values: vec![],
            not_values: vec![],
        },
    ];
    assert_eq!(
        errors(&policy),
        "spec.rules[0].when[0].key: \"source.ips\" is not a condition key Istio defines; \
         spec.rules[0].when[1].values[0]: \"1.2.3\" is neither an IP address nor a CIDR block; \
         spec.rules[0].when[2]: a condition needs values or notValues"
    );
}

#[test]
fn selector_and_target_refs_exclude_each_other() {
    let mut policy = parse(VALID);
    policy.spec.target_refs = vec![PolicyTargetReference {
        group: GATEWAY_API_GROUP.into(),
        kind: "Gateway".into(),
        name: "waypoint".into(),
    }];
    assert_eq!(errors(&policy), "spec: selector and targetRefs are mutually exclusive");
    policy.spec.selector = None;
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn target_refs_are_gateways_or_services() {
    let yaml = r#"
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: waypoint-policy, namespace: shop}
spec:
  targetRefs:
  - {kind: Service, name: api}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
  rules: [{}]
"#;
    assert_eq!(
        errors(&parse(yaml)),
        "spec.targetRefs[1].kind: \"gateway.networking.k8s.io/HTTPRoute\" is not a target: use Gateway \
         (group gateway.networking.k8s.io) or Service (group \"\")"
    );
}

#[test]
fn deny_and_audit_need_rules() {
    let mut policy = parse(VALID);
    policy.spec.rules.clear();
    policy.spec.action = Action::Deny;
    assert_eq!(
        errors(&policy),
        "spec.rules: a DENY or AUDIT policy needs rules: without any it matches nothing"
    );
    policy.spec.action = Action::Audit;
    assert!(policy.validate().is_err());
    policy.spec.action = Action::Allow;
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn unknown_action_is_a_parse_error() {
    let yaml = "apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: CUSTOM}";
    let error = serde_norway::from_str::<AuthorizationPolicy>(yaml)
        .err()
        .map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("CUSTOM")));
}

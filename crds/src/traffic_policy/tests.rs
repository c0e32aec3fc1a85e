use super::*;

fn parse(yaml: &str) -> TrafficPolicy {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(policy: &TrafficPolicy) -> String {
    policy.validate().err().map(|e| e.to_string()).unwrap_or_default()
}

const VALID: &str = r#"
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  targetRef: {kind: Service, name: reviews}
  connectionPool:
    tcp: {maxConnections: 100, connectTimeout: 250ms}
    http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 0, maxRetries: 3, idleTimeout: 1h}
  outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 3, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  loadBalancer: {simple: ROUND_ROBIN}
  retryBudget: {percent: 20.5, minRetryConcurrency: 3}
  timeout: 1.5s
"#;

#[test]
fn valid_policy_round_trips() {
    let policy = parse(VALID);
    assert_eq!(policy.validate(), Ok(()));
    let outlier = policy.spec.outlier_detection.clone().unwrap_or_default();
    assert_eq!(outlier.consecutive_5xx_errors, Some(5));
    assert_eq!(
        policy.spec.load_balancer.clone().map(|l| l.simple),
        Some(LoadBalancerAlgorithm::RoundRobin)
    );
    let yaml = serde_norway::to_string(&policy).unwrap_or_default();
    assert!(yaml.contains("consecutive5xxErrors: 5"), "{yaml}");
    assert_eq!(parse(&yaml), policy);
}

#[test]
fn load_balancer_defaults_to_least_request() {
    let policy = parse(
        "apiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec:\n  targetRef: {kind: Service, name: a}\n  loadBalancer: {}",
    );
    assert_eq!(
        policy.spec.load_balancer.map(|l| l.simple),
        Some(LoadBalancerAlgorithm::LeastRequest)
    );
}

#[test]
fn ranges_and_durations_are_checked() {
    let mut policy = parse(VALID);
    let pool = policy.spec.connection_pool.get_or_insert_with(ConnectionPool::default);
    let tcp = pool.tcp.get_or_insert_with(TcpSettings::default);
    tcp.max_connections = Some(0);
    tcp.connect_timeout = Some("0ms".into());
    let outlier = policy
        .spec
        .outlier_detection
        .get_or_insert_with(OutlierDetection::default);
    outlier.max_ejection_percent = Some(101);
    outlier.interval = Some("10 s".into());
    policy.spec.retry_budget = Some(RetryBudget {
        percent: Some(100.5),
        min_retry_concurrency: Some(-1),
    });
    policy.spec.timeout = Some("1d".into());
    let message = errors(&policy);
    for expected in [
        "spec.timeout: \"1d\" is not a duration",
        "spec.connectionPool.tcp.maxConnections: \"0\" is below the minimum 1",
        "spec.connectionPool.tcp.connectTimeout: \"0ms\" must be longer than zero",
        "spec.outlierDetection.interval: \"10 s\" is not a duration",
        "spec.outlierDetection.maxEjectionPercent: \"101\" is not a percentage (0-100)",
        "spec.retryBudget.percent: \"100.5\" is not a percentage (0-100)",
        "spec.retryBudget.minRetryConcurrency: \"-1\" is below the minimum 0",
    ] {
        assert!(message.contains(expected), "{expected} missing from {message}");
    }
    assert_eq!(policy.validate().err().map(|e| e.violations().len()), Some(7));
}

#[test]
fn target_must_be_a_service() {
    let mut policy = parse(VALID);
    policy.spec.target_ref.kind = "Deployment".into();
    assert_eq!(
        errors(&policy),
        "spec.targetRef.kind: \"/Deployment\" is not a target: a TrafficPolicy is for a Service (group \"\", kind \
         Service)"
    );
}

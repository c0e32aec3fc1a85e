//! `TrafficPolicy`: per-Service connection limits, outlier detection, load balancing, retry
//! budget and default timeout for the waypoint, with its schema rules and
//! [`TrafficPolicy::validate`]. The waypoint applies it; this module only describes it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PolicyStatus, PolicyTargetReference};
use crate::validation::{
    Checker, DURATION_MAX_LENGTH, DURATION_PATTERN, FieldPath, POSITIVE_DURATION_RULE, ValidationErrors,
};

/// How a waypoint treats the traffic to one Service.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    doc = "An Ambit TrafficPolicy: connection limits, outlier detection, load balancing, retry budget and timeout for one Service.",
    status = "PolicyStatus",
    shortname = "tp",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service of this namespace the policy is for.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.group == '' && self.kind == 'Service'",
        "message": "the target is a Service (group \"\", kind Service)"
    }]))]
    pub target_ref: PolicyTargetReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Default request timeout when the route sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub timeout: Option<String>,
}

/// Limits on connections and requests to the Service's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Most connections open to the Service at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub connect_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Most HTTP/1.1 requests queued while waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub http1_max_pending_requests: Option<i32>,
    /// Most concurrent HTTP/2 requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub http2_max_requests: Option<i32>,
    /// Requests per connection before it is closed; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_requests_per_connection: Option<i32>,
    /// Most retries outstanding at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub idle_timeout: Option<String>,
}

/// Ejects endpoints that keep failing, for a while.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx responses in a row that eject an endpoint; 0 turns this check off.
    #[serde(default, rename = "consecutive5xxErrors", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub consecutive_5xx_errors: Option<i32>,
    /// 502, 503 and 504 responses (and connect failures) in a row that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub consecutive_gateway_errors: Option<i32>,
    /// How often endpoints are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub interval: Option<String>,
    /// The first ejection's length; each further ejection of the same endpoint lasts longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: LoadBalancerAlgorithm,
}

/// Istio's simple load-balancing algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum LoadBalancerAlgorithm {
    RoundRobin,
    /// Power of two choices among the endpoints, by outstanding requests.
    #[default]
    LeastRequest,
    Random,
    /// Connects to the address the caller asked for, no balancing.
    Passthrough,
}

/// Retries may add at most `percent` of the active requests, and always `minRetryConcurrency`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_retry_concurrency: Option<i32>,
}

impl TrafficPolicy {
    /// Checks the schema's rules: the target kind, ranges and durations.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut checker = Checker::default();
        let spec = &self.spec;
        let path = FieldPath::spec();
        let target = &spec.target_ref;
        if !(target.group.is_empty() && target.kind == "Service") {
            checker.invalid(
                &path.field("targetRef").field("kind"),
                format!("{}/{}", target.group, target.kind),
                "is not a target: a TrafficPolicy is for a Service (group \"\", kind Service)",
            );
        }
        checker.not_empty(&path.field("targetRef").field("name"), &target.name);
        let duration = |checker: &mut Checker, path: FieldPath, value: &Option<String>| {
            if let Some(value) = value {
                checker.positive_duration(&path, value);
            }
        };
        let at_least = |checker: &mut Checker, path: FieldPath, value: Option<i32>, min: i64| {
            if let Some(value) = value {
                checker.at_least(&path, value.into(), min);
            }
        };
        duration(&mut checker, path.field("timeout"), &spec.timeout);
        if let Some(pool) = &spec.connection_pool {
            let path = path.field("connectionPool");
            if let Some(tcp) = &pool.tcp {
                let path = path.field("tcp");
                at_least(&mut checker, path.field("maxConnections"), tcp.max_connections, 1);
                duration(&mut checker, path.field("connectTimeout"), &tcp.connect_timeout);
            }
            if let Some(http) = &pool.http {
                let path = path.field("http");
                let limits = [
                    ("http1MaxPendingRequests", http.http1_max_pending_requests, 1),
                    ("http2MaxRequests", http.http2_max_requests, 1),
                    ("maxRequestsPerConnection", http.max_requests_per_connection, 0),
                    ("maxRetries", http.max_retries, 0),
                ];
                for (name, value, min) in limits {
                    at_least(&mut checker, path.field(name), value, min);
                }
                duration(&mut checker, path.field("idleTimeout"), &http.idle_timeout);
            }
        }
        if let Some(outlier) = &spec.outlier_detection {
            let path = path.field("outlierDetection");
            at_least(
                &mut checker,
                path.field("consecutive5xxErrors"),
                outlier.consecutive_5xx_errors,
                0,
            );
            let gateway_errors = outlier.consecutive_gateway_errors;
            at_least(&mut checker, path.field("consecutiveGatewayErrors"), gateway_errors, 0);
            duration(&mut checker, path.field("interval"), &outlier.interval);
            duration(
                &mut checker,
                path.field("baseEjectionTime"),
                &outlier.base_ejection_time,
            );
            if let Some(percent) = outlier.max_ejection_percent {
                let reason = "is not a percentage (0-100)";
                checker.range(&path.field("maxEjectionPercent"), percent.into(), 0, 100, reason);
            }
        }
        if let Some(budget) = &spec.retry_budget {
            let path = path.field("retryBudget");
            if let Some(percent) = budget.percent {
                checker.percentage(&path.field("percent"), percent);
            }
            at_least(
                &mut checker,
                path.field("minRetryConcurrency"),
                budget.min_retry_concurrency,
                0,
            );
        }
        checker.finish()
    }
}

#[cfg(test)]
mod tests;

//! `FaultInjection`: delays and aborts a waypoint injects into a share of the requests to a
//! Service or an HTTPRoute rule, with its schema rules and [`FaultInjection::validate`].

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{GATEWAY_API_GROUP, PolicyStatus, PolicyTargetReferenceWithSectionName};
use crate::validation::{
    Checker, DURATION_MAX_LENGTH, DURATION_PATTERN, FieldPath, POSITIVE_DURATION_RULE, ValidationErrors,
};

/// Faults for the requests to one Service, or to one HTTPRoute (or one of its named rules).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "FaultInjection",
    namespaced,
    doc = "An Ambit FaultInjection: delays and aborts injected into requests to a Service or route.",
    status = "PolicyStatus",
    shortname = "fi",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.delay) || has(self.abort)",
    "message": "a fault injection needs delay or abort"
}]))]
pub struct FaultInjectionSpec {
    /// A Service (group ""), or an HTTPRoute or GRPCRoute (group gateway.networking.k8s.io)
    /// whose rule `sectionName` names, or all its rules.
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "(self.group == '' && self.kind == 'Service') || (self.group == 'gateway.networking.k8s.io' && (self.kind == 'HTTPRoute' || self.kind == 'GRPCRoute'))",
            "message": "the target is a Service (group \"\") or an HTTPRoute or GRPCRoute (group gateway.networking.k8s.io)"
        },
        {
            "rule": "self.kind != 'Service' || !has(self.sectionName)",
            "message": "sectionName names a route rule; a Service target has none"
        }
    ]))]
    pub target_ref: PolicyTargetReferenceWithSectionName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// Holds the request back before forwarding it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": POSITIVE_DURATION_RULE, "message": "must be longer than zero"}]))]
    pub fixed_delay: String,
    /// Share of requests delayed, 0-100; absent is 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: Option<f64>,
}

/// Answers the request with an error instead of forwarding it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.httpStatus) != has(self.grpcStatus)",
    "message": "an abort sets exactly one of httpStatus and grpcStatus"
}]))]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub http_status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcStatus>,
    /// Share of requests aborted, 0-100; absent is 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: Option<f64>,
}

/// gRPC status codes an abort may answer with (all but `OK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum GrpcStatus {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcStatus {
    /// The numeric code sent in `grpc-status`.
    pub fn code(self) -> u8 {
        match self {
            Self::Cancelled => 1,
            Self::Unknown => 2,
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Aborted => 10,
            Self::OutOfRange => 11,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }
}

/// The kinds a fault injection may target, with their API group.
const TARGETS: [(&str, &str); 3] = [
    ("", "Service"),
    (GATEWAY_API_GROUP, "HTTPRoute"),
    (GATEWAY_API_GROUP, "GRPCRoute"),
];

impl FaultInjection {
    /// Checks the schema's rules: a supported target, delay or abort, one abort status, ranges.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut checker = Checker::default();
        let spec = &self.spec;
        let path = FieldPath::spec();
        let target = &spec.target_ref;
        let target_path = path.field("targetRef");
        if !TARGETS.contains(&(target.group.as_str(), target.kind.as_str())) {
            checker.invalid(
                &target_path.field("kind"),
                format!("{}/{}", target.group, target.kind),
                "is not a target: use a Service (group \"\") or an HTTPRoute or GRPCRoute (group \
                 gateway.networking.k8s.io)",
            );
        }
        checker.not_empty(&target_path.field("name"), &target.name);
        if target.kind == "Service" && target.section_name.is_some() {
            checker.wrong(
                &target_path.field("sectionName"),
                "sectionName names a route rule; a Service target has none",
            );
        }
        if spec.delay.is_none() && spec.abort.is_none() {
            checker.wrong(&path, "a fault injection needs delay or abort");
        }
        if let Some(delay) = &spec.delay {
            let path = path.field("delay");
            checker.positive_duration(&path.field("fixedDelay"), &delay.fixed_delay);
            if let Some(percentage) = delay.percentage {
                checker.percentage(&path.field("percentage"), percentage);
            }
        }
        if let Some(abort) = &spec.abort {
            let path = path.field("abort");
            if abort.http_status.is_some() == abort.grpc_status.is_some() {
                checker.wrong(&path, "an abort sets exactly one of httpStatus and grpcStatus");
            }
            if let Some(status) = abort.http_status {
                let reason = "is not an HTTP error status (200-599)";
                checker.range(&path.field("httpStatus"), status.into(), 200, 599, reason);
            }
            if let Some(percentage) = abort.percentage {
                checker.percentage(&path.field("percentage"), percentage);
            }
        }
        checker.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> FaultInjection {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(fault: &FaultInjection) -> String {
        fault.validate().err().map(|e| e.to_string()).unwrap_or_default()
    }

    const VALID: &str = r#"
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow-reviews, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: v2}
  delay: {fixedDelay: 1.5s, percentage: 10}
  abort: {grpcStatus: UNAVAILABLE, percentage: 0.5}
"#;

    #[test]
    fn valid_fault_round_trips() {
        let fault = parse(VALID);
        assert_eq!(fault.validate(), Ok(()));
        assert_eq!(
            fault
                .spec
                .abort
                .as_ref()
                .and_then(|a| a.grpc_status)
                .map(GrpcStatus::code),
            Some(14)
        );
        let again = parse(&serde_norway::to_string(&fault).unwrap_or_default());
        assert_eq!(again, fault);
    }

    #[test]
    fn needs_delay_or_abort() {
        let mut fault = parse(VALID);
        fault.spec.delay = None;
        fault.spec.abort = None;
        assert_eq!(errors(&fault), "spec: a fault injection needs delay or abort");
    }

    #[test]
    fn abort_takes_one_status_in_range() {
        let mut fault = parse(VALID);
        let abort = fault.spec.abort.get_or_insert_with(Abort::default);
        abort.http_status = Some(700);
        abort.percentage = Some(101.0);
        assert_eq!(
            errors(&fault),
            "spec.abort: an abort sets exactly one of httpStatus and grpcStatus; spec.abort.httpStatus: \"700\" \
             is not an HTTP error status (200-599); spec.abort.percentage: \"101\" is not a percentage (0-100)"
        );
        fault.spec.abort = Some(Abort::default());
        assert_eq!(
            errors(&fault),
            "spec.abort: an abort sets exactly one of httpStatus and grpcStatus"
        );
    }

    #[test]
    fn delay_is_a_positive_duration() {
        let mut fault = parse(VALID);
        fault.spec.delay = Some(Delay {
            fixed_delay: "0s".into(),
            percentage: Some(-1.0),
        });
        assert_eq!(
            errors(&fault),
            "spec.delay.fixedDelay: \"0s\" must be longer than zero; spec.delay.percentage: \"-1\" is not a \
             percentage (0-100)"
        );
        fault.spec.delay = Some(Delay {
            fixed_delay: "5 seconds".into(),
            percentage: None,
        });
        assert!(errors(&fault).starts_with("spec.delay.fixedDelay: \"5 seconds\" is not a duration"));
    }

    #[test]
    fn targets_are_services_or_routes() {
        let mut fault = parse(VALID);
        fault.spec.target_ref.kind = "Gateway".into();
        fault.spec.target_ref.name = String::new();
        assert_eq!(
            errors(&fault),
            "spec.targetRef.kind: \"gateway.networking.k8s.io/Gateway\" is not a target: use a Service (group \"\") \
             or an HTTPRoute or GRPCRoute (group gateway.networking.k8s.io); spec.targetRef.name: \"\" must not be \
             empty"
        );
        fault.spec.target_ref = PolicyTargetReferenceWithSectionName {
            group: String::new(),
            kind: "Service".into(),
            name: "reviews".into(),
            section_name: Some("http".into()),
        };
        assert_eq!(
            errors(&fault),
            "spec.targetRef.sectionName: sectionName names a route rule; a Service target has none"
        );
    }
}

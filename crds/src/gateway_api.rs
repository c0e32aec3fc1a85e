//! The part of the Gateway API (`gateway.networking.k8s.io/v1`) Ambit reads: `Gateway` for
//! waypoints, `HTTPRoute` and `GRPCRoute` for L7 routing.
//!
//! Only the fields Ambit uses are typed; unknown fields are ignored when reading and kept by the
//! schemas [`crds`] returns (for installing into a test API server). The real Gateway API CRDs
//! come from the Gateway API project; crdgen does not write these.

mod common;
mod gateway;
mod grpc_route;
mod http_route;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{
    BackendObjectReference, HttpBackendRef, HttpHeader, HttpHeaderFilter, HttpHeaderMatch, HttpPathModifier,
    HttpQueryParamMatch, HttpRequestMirrorFilter, HttpRouteFilter, HttpUrlRewriteFilter, ParentReference,
    RouteParentStatus, RouteStatus,
};
pub use gateway::{Gateway, GatewaySpec, GatewayStatus, GatewayStatusAddress, Listener};
pub use grpc_route::{GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec};
pub use http_route::{HttpPathMatch, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, HttpRouteTimeouts};

/// The API group of these kinds.
pub const GROUP: &str = crate::common::GATEWAY_API_GROUP;

/// `gatewayClassName` of the Gateways that are Ambit waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "ambit-waypoint";

/// The CRDs of the kinds here, for a test API server; real clusters install the Gateway API's own.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Gateway::crd(), HttpRoute::crd(), GrpcRoute::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_route_reads_with_unknown_fields() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  futureField: {x: 1}
  rules:
  - name: canary
    matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-canary, value: "1"}]
      method: GET
      queryParams: [{type: Exact, name: debug, value: "1"}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-c]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 9080}, percent: 10}
    - type: CORS
      cors: {allowOrigins: ["*"]}
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    timeouts: {request: 10s, backendRequest: 2s}
"#;
        let route: HttpRoute = serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert!(route.spec.parent_refs[0].is_service());
        let rule = &route.spec.rules[0];
        assert_eq!(rule.filters.len(), 4);
        assert_eq!(rule.filters[3].type_, "CORS");
        assert_eq!(rule.backend_refs[1].weight, Some(10));
        let again: HttpRoute = serde_norway::from_str(&serde_norway::to_string(&route).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, route);
    }

    #[test]
    fn gateway_and_grpc_route_read() {
        let gateway: Gateway = serde_norway::from_str(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\n\
             spec:\n  gatewayClassName: ambit-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n\
             status:\n  addresses: [{type: Hostname, value: waypoint.shop.svc.cluster.local}]\n  listeners: []",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gateway.spec.gateway_class_name, WAYPOINT_GATEWAY_CLASS);
        assert_eq!(gateway.status.map(|s| s.addresses.len()), Some(1));
        let route: GrpcRoute = serde_norway::from_str(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: greeter}\n\
             spec:\n  parentRefs: [{name: waypoint}]\n  rules:\n  - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]\n    backendRefs: [{name: greeter, port: 50051}]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!route.spec.parent_refs[0].is_service());
        let names: Vec<_> = crds().into_iter().filter_map(|c| c.metadata.name).collect();
        assert_eq!(
            names,
            [
                "gateways.gateway.networking.k8s.io",
                "httproutes.gateway.networking.k8s.io",
                "grpcroutes.gateway.networking.k8s.io"
            ]
        );
    }
}

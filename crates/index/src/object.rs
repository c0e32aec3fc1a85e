//! The objects the index takes in, their kinds and keys.

use std::fmt;
use std::sync::Arc;

use ambit_crds::gateway_api::{Gateway, GrpcRoute, HttpRoute};
use ambit_crds::{AuthorizationPolicy, FaultInjection, PeerAuthentication, TrafficPolicy};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// One object of a kind the index reads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    TrafficPolicy(Arc<TrafficPolicy>),
    FaultInjection(Arc<FaultInjection>),
}

/// The kinds of [`Object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    Gateway,
    HttpRoute,
    GrpcRoute,
    AuthorizationPolicy,
    PeerAuthentication,
    TrafficPolicy,
    FaultInjection,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Gateway => "Gateway",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::TrafficPolicy => "TrafficPolicy",
            Self::FaultInjection => "FaultInjection",
        };
        f.write_str(name)
    }
}

/// Names one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::Pod(_) => Kind::Pod,
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Gateway(_) => Kind::Gateway,
            Self::HttpRoute(_) => Kind::HttpRoute,
            Self::GrpcRoute(_) => Kind::GrpcRoute,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::TrafficPolicy(_) => Kind::TrafficPolicy,
            Self::FaultInjection(_) => Kind::FaultInjection,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Namespace(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::GrpcRoute(o) => &o.metadata,
            Self::AuthorizationPolicy(o) => &o.metadata,
            Self::PeerAuthentication(o) => &o.metadata,
            Self::TrafficPolicy(o) => &o.metadata,
            Self::FaultInjection(o) => &o.metadata,
        }
    }
}

macro_rules! object_from {
    ($($variant:ident($type:ty)),* $(,)?) => {
        $(
            impl From<$type> for Object {
                fn from(object: $type) -> Self {
                    Self::$variant(Arc::new(object))
                }
            }
        )*
    };
}

object_from!(
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    TrafficPolicy(TrafficPolicy),
    FaultInjection(FaultInjection),
);

//! The kinds the operator reads, in one table: how a manifest document decodes into an index
//! [`Object`], and one Kubernetes watcher per kind. What the objects mean is the index's business.

use std::sync::Arc;

use ambit_crds::gateway_api::{Gateway, GrpcRoute, HttpRoute};
use ambit_crds::{AuthorizationPolicy, FaultInjection, PeerAuthentication, TrafficPolicy};
use ambit_index::{Kind, Object};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::source::kubernetes::{self, Event};
use ambit_manifests::Document;

const CORE: &str = "";
const DISCOVERY: &str = "discovery.k8s.io";
const GATEWAY: &str = "gateway.networking.k8s.io";
const AMBIT: &str = "ambit.dev";

/// The index kind of API group `group` and kind `kind`, if the operator reads it.
pub fn kind_of(group: &str, kind: &str) -> Option<Kind> {
    Some(match (group, kind) {
        (CORE, "Namespace") => Kind::Namespace,
        (CORE, "Pod") => Kind::Pod,
        (CORE, "Service") => Kind::Service,
        (DISCOVERY, "EndpointSlice") => Kind::EndpointSlice,
        (GATEWAY, "Gateway") => Kind::Gateway,
        (GATEWAY, "HTTPRoute") => Kind::HttpRoute,
        (GATEWAY, "GRPCRoute") => Kind::GrpcRoute,
        (AMBIT, "AuthorizationPolicy") => Kind::AuthorizationPolicy,
        (AMBIT, "PeerAuthentication") => Kind::PeerAuthentication,
        (AMBIT, "TrafficPolicy") => Kind::TrafficPolicy,
        (AMBIT, "FaultInjection") => Kind::FaultInjection,
        _ => return None,
    })
}

/// Decodes a manifest document of a kind the operator reads; `Ok(None)` for other kinds. A
/// namespaced object without a namespace lands in `default`, as with `kubectl apply`. Errors
/// name the field path and what is wrong with it.
pub fn decode(document: &Document) -> Result<Option<Object>, String> {
    let group = document.api_version.rsplit_once('/').map_or(CORE, |(g, _)| g);
    let Some(kind) = kind_of(group, &document.kind) else {
        return Ok(None);
    };
    let mut value = document.value.clone();
    if kind != Kind::Namespace
        && document.namespace.is_empty()
        && let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut())
    {
        metadata.insert("namespace".to_owned(), serde_json::Value::String("default".to_owned()));
    }
    fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<Arc<T>, String> {
        serde_path_to_error::deserialize(value)
            .map(Arc::new)
            .map_err(|e| match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                path => format!("{path}: {}", e.inner()),
            })
    }
    Ok(Some(match kind {
        Kind::Namespace => Object::Namespace(typed::<Namespace>(value)?),
        Kind::Pod => Object::Pod(typed::<Pod>(value)?),
        Kind::Service => Object::Service(typed::<Service>(value)?),
        Kind::EndpointSlice => Object::EndpointSlice(typed::<EndpointSlice>(value)?),
        Kind::Gateway => Object::Gateway(typed::<Gateway>(value)?),
        Kind::HttpRoute => Object::HttpRoute(typed::<HttpRoute>(value)?),
        Kind::GrpcRoute => Object::GrpcRoute(typed::<GrpcRoute>(value)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(typed::<AuthorizationPolicy>(value)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(typed::<PeerAuthentication>(value)?),
        Kind::TrafficPolicy => Object::TrafficPolicy(typed::<TrafficPolicy>(value)?),
        Kind::FaultInjection => Object::FaultInjection(typed::<FaultInjection>(value)?),
        _ => return Ok(None),
    }))
}

/// How many kinds [`watch_all`] watches: the operator is synced when each has listed once.
pub const WATCHED_KINDS: usize = 11;

/// Starts one watcher per kind, all sending to `tx`, until `stop`.
pub fn watch_all(client: &Client, tx: &mpsc::Sender<Event<Object>>, stop: &CancellationToken) {
    macro_rules! watch {
        ($type:ty, $name:literal, $variant:ident) => {
            tokio::spawn(kubernetes::watch(
                Api::<$type>::all(client.clone()),
                $name,
                |o| Object::$variant(Arc::new(o)),
                tx.clone(),
                stop.clone(),
            ));
        };
    }
    watch!(Namespace, "Namespace", Namespace);
    watch!(Pod, "Pod", Pod);
    watch!(Service, "Service", Service);
    watch!(EndpointSlice, "EndpointSlice", EndpointSlice);
    watch!(Gateway, "Gateway", Gateway);
    watch!(HttpRoute, "HTTPRoute", HttpRoute);
    watch!(GrpcRoute, "GRPCRoute", GrpcRoute);
    watch!(AuthorizationPolicy, "AuthorizationPolicy", AuthorizationPolicy);
    watch!(PeerAuthentication, "PeerAuthentication", PeerAuthentication);
    watch!(TrafficPolicy, "TrafficPolicy", TrafficPolicy);
    watch!(FaultInjection, "FaultInjection", FaultInjection);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn document(api_version: &str, kind: &str, value: serde_json::Value) -> Document {
        Document {
            file: PathBuf::from("m.yaml"),
            line: 1,
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: value
                .pointer("/metadata/namespace")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_owned(),
            name: "x".to_owned(),
            value,
        }
    }

    #[test]
    fn known_kinds_decode_and_others_are_ignored() {
        let pod = document(
            "v1",
            "Pod",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        );
        match decode(&pod) {
            Ok(Some(Object::Pod(p))) => assert_eq!(p.metadata.namespace.as_deref(), Some("default")),
            other => panic!("unexpected {other:?}"),
        }
        let deployment = document("apps/v1", "Deployment", serde_json::json!({"metadata": {"name": "d"}}));
        assert!(matches!(decode(&deployment), Ok(None)));
        let foreign = document("example.com/v1", "Pod", serde_json::json!({"metadata": {"name": "p"}}));
        assert!(matches!(decode(&foreign), Ok(None)));
    }

    #[test]
    fn a_bad_field_is_named_with_its_path() {
        let service = document(
            "v1",
            "Service",
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "a"},
                "spec": {"ports": [{"port": "eighty"}]}}),
        );
        let error = decode(&service).expect_err("bad port");
        assert!(
            error.starts_with("spec.ports[0].port: invalid type: string \"eighty\""),
            "{error}"
        );
        let policy = document(
            "ambit.dev/v1alpha1",
            "AuthorizationPolicy",
            serde_json::json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "a"}, "spec": {"action": "CUSTOM"}}),
        );
        let error = decode(&policy).expect_err("bad action");
        assert!(error.starts_with("spec.action: unknown variant `CUSTOM`"), "{error}");
    }
}

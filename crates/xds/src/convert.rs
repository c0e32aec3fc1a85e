//! Conversion between the model (`ambit-model`) and Istio's workload xDS resources.
//!
//! The operator turns a [`State`] into named `Address` and `Authorization` resources
//! ([`to_resources`]); ztunnel turns received resources back into model types
//! ([`address_from_any`], [`authorization_from_any`]), rejecting bad input with a
//! [`ConvertError`] that names the resource, field and value. This module owns no I/O.
//!
//! What does not map: workload labels and service selectors (the wire carries memberships in
//! `Workload.services` and policy names in `Workload.authorization_policies` instead), a
//! workload's local `netns`, AUDIT policies (ztunnel's wire has no AUDIT action; they are
//! skipped and listed in [`Resources::skipped`]), and `PeerAuthentication` objects themselves,
//! which travel as DENY authorizations the way istiod converts them (see [`peer_authentication`]).

mod from_proto;
pub mod peer_authentication;
mod to_proto;

use std::collections::BTreeMap;

use ambit_proto::istio::security as proto_security;
use ambit_proto::istio::workload as proto_workload;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use prost_types::Any;

pub use from_proto::{ReceivedAddress, authorization_from_proto, service_from_proto, workload_from_proto};
pub use to_proto::{authorization_to_proto, service_to_proto, workload_to_proto, workload_uid};

use ambit_model::{AuthorizationPolicy, State};

/// A proto resource that cannot become a model value; the client NACKs it with this message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("{resource}: field {field} has invalid value {value}: {reason}")]
    Invalid {
        resource: String,
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("{resource}: cannot decode a {type_url}: {source}")]
    Decode {
        resource: String,
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("{resource}: type URL {found} where {expected} was subscribed")]
    WrongType {
        resource: String,
        found: String,
        expected: &'static str,
    },
}

impl ConvertError {
    pub(crate) fn invalid(
        resource: &str,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        Self::Invalid {
            resource: resource.to_owned(),
            field: field.into(),
            value: value.to_string(),
            reason,
        }
    }
}

/// Settings both directions need: what the wire elides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Cluster id in workload uids (`<cluster>//Pod/<ns>/<name>`), e.g. `Kubernetes`.
    pub cluster_id: String,
    /// The mesh trust domain, which Istio elides from workloads that use it.
    pub trust_domain: String,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".to_owned(),
            trust_domain: ambit_model::config::DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// Every resource of a state, by xDS resource name, ready for the server's store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// `istio.workload.Address`: workloads by uid, services by `namespace/hostname`.
    pub addresses: BTreeMap<String, Any>,
    /// `istio.security.Authorization` by `namespace/name`, converted peer authentications included.
    pub authorizations: BTreeMap<String, Any>,
    /// `namespace/name` of the policies that have no wire form (AUDIT).
    pub skipped: Vec<String>,
}

/// Converts a whole state. Cost is O(workloads × (services + policies)), for the operator's
/// periodic or per-event recomputation; the store skips resources whose bytes did not change.
pub fn to_resources(state: &State, options: &ConvertOptions) -> Resources {
    let mut resources = Resources::default();
    let mut converted = BTreeMap::new();
    let static_strict_key = peer_authentication::static_strict_key();
    let mut needs_static_strict = false;
    for workload in state.workloads() {
        let mtls = peer_authentication::for_workload(state, workload);
        needs_static_strict |= mtls.policy_names.contains(&static_strict_key);
        if let Some((name, policy)) = mtls.converted {
            converted.insert(name, policy);
        }
        let proto = workload_to_proto(state, workload, &mtls.policy_names, options);
        resources.addresses.insert(
            proto.uid.clone(),
            address_any(proto_workload::address::Type::Workload(proto)),
        );
    }
    for service in state.services() {
        resources.addresses.insert(
            service.endpoint_key(),
            address_any(proto_workload::address::Type::Service(service_to_proto(service))),
        );
    }
    for policy in state.policies() {
        match authorization_to_proto(policy) {
            Some(proto) => {
                resources.authorizations.insert(policy.key(), authorization_any(&proto));
            }
            None => resources.skipped.push(policy.key()),
        }
    }
    for (name, policy) in converted {
        resources.authorizations.insert(name, authorization_any(&policy));
    }
    if needs_static_strict {
        let strict = peer_authentication::static_strict();
        resources
            .authorizations
            .insert(static_strict_key, authorization_any(&strict));
    }
    resources
}

/// Wraps an address for the wire.
pub fn address_any(address: proto_workload::address::Type) -> Any {
    Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: proto_workload::Address { r#type: Some(address) }.encode_to_vec(),
    }
}

/// Wraps an authorization for the wire.
pub fn authorization_any(policy: &proto_security::Authorization) -> Any {
    Any {
        type_url: AUTHORIZATION_TYPE_URL.to_owned(),
        value: policy.encode_to_vec(),
    }
}

/// Decodes and converts one received `Address` resource named `name`.
pub fn address_from_any(name: &str, any: &Any, options: &ConvertOptions) -> Result<ReceivedAddress, ConvertError> {
    check_type(name, any, ADDRESS_TYPE_URL)?;
    let address = proto_workload::Address::decode(any.value.as_slice()).map_err(|source| ConvertError::Decode {
        resource: name.to_owned(),
        type_url: any.type_url.clone(),
        source,
    })?;
    match address.r#type {
        Some(proto_workload::address::Type::Workload(w)) => {
            let (workload, policies) = workload_from_proto(name, w, options)?;
            Ok(ReceivedAddress::Workload {
                workload,
                authorization_policies: policies,
            })
        }
        Some(proto_workload::address::Type::Service(s)) => Ok(ReceivedAddress::Service(service_from_proto(name, s)?)),
        None => Err(ConvertError::invalid(
            name,
            "type",
            "none",
            "an Address must hold a workload or a service",
        )),
    }
}

/// Decodes and converts one received `Authorization` resource named `name`. A
/// `WORKLOAD_SELECTOR` policy comes back with an empty [`ambit_model::PolicyScope::Workloads`];
/// the client fills it from the workloads that name the policy.
pub fn authorization_from_any(name: &str, any: &Any) -> Result<AuthorizationPolicy, ConvertError> {
    check_type(name, any, AUTHORIZATION_TYPE_URL)?;
    let policy =
        proto_security::Authorization::decode(any.value.as_slice()).map_err(|source| ConvertError::Decode {
            resource: name.to_owned(),
            type_url: any.type_url.clone(),
            source,
        })?;
    authorization_from_proto(name, policy)
}

fn check_type(name: &str, any: &Any, expected: &'static str) -> Result<(), ConvertError> {
    if any.type_url == expected {
        Ok(())
    } else {
        Err(ConvertError::WrongType {
            resource: name.to_owned(),
            found: any.type_url.clone(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests;

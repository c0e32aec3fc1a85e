//! PeerAuthentication on the wire, the way istiod conveys it to ztunnel: not as itself but as
//! DENY authorizations that refuse callers without a principal (plaintext).
//!
//! A workload whose effective mode is STRICT on every port names the shared policy
//! `<root>/istio_converted_static_strict`. A workload whose ports differ from its mode names a
//! per-policy `converted_peer_authentication_<name>` that denies plaintext on the STRICT ports
//! only. Both are `WORKLOAD_SELECTOR`-scoped, so they apply exactly to the workloads that list
//! them. Effective modes come from [`State::mtls_mode`], including `meshDefaults`, which istiod
//! lacks. Our ztunnel authorizes plaintext connections too, so it enforces these as received.

use std::collections::BTreeSet;

use ambit_model::authorization::ROOT_NAMESPACE;
use ambit_model::{MtlsMode, PeerAuthentication, State, Workload};
use ambit_proto::istio::security as sec;

/// istiod's name for the shared STRICT policy.
pub const STATIC_STRICT_POLICY: &str = "istio_converted_static_strict";

/// istiod's prefix for a policy converted from a port-level PeerAuthentication.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// The mTLS part of one workload's wire form.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadMtls {
    /// Policy names (`namespace/name`) to list in the workload's `authorization_policies`.
    pub policy_names: Vec<String>,
    /// The converted port-level policy the workload names, if any, with its resource name.
    pub converted: Option<(String, sec::Authorization)>,
}

/// The shared STRICT policy: deny every connection without a principal.
pub fn static_strict() -> sec::Authorization {
    sec::Authorization {
        name: STATIC_STRICT_POLICY.to_owned(),
        namespace: ROOT_NAMESPACE.to_owned(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![no_principal()],
        }],
    }
}

/// `<root>/istio_converted_static_strict`, the resource name of [`static_strict`].
pub fn static_strict_key() -> String {
    format!("{ROOT_NAMESPACE}/{STATIC_STRICT_POLICY}")
}

/// Which converted policies `workload` names, and the port-level one's content.
pub fn for_workload(state: &State, workload: &Workload) -> WorkloadMtls {
    let chain = chain(state, workload);
    let base = chain
        .iter()
        .flatten()
        .find_map(|p| p.mode)
        .unwrap_or(state.default_mtls_mode());
    let base_strict = base == MtlsMode::Strict;
    let ports: BTreeSet<u16> = chain
        .iter()
        .flatten()
        .flat_map(|p| p.port_level_mtls.keys().copied())
        .collect();
    let exceptions: Vec<u32> = ports
        .into_iter()
        .filter(|port| (state.mtls_mode(workload, *port) == MtlsMode::Strict) != base_strict)
        .map(u32::from)
        .collect();
    // The innermost policy names the converted one: all workloads it governs share one chain
    // (same namespace), hence one content under one name.
    let innermost = chain.iter().flatten().next();
    match innermost {
        Some(policy) if !exceptions.is_empty() => {
            let name = format!("{CONVERTED_PREFIX}{}", policy.name);
            let ports = if base_strict {
                // Deny plaintext except on the exempted ports.
                sec::Match {
                    not_destination_ports: exceptions,
                    ..Default::default()
                }
            } else {
                // Deny plaintext on the STRICT ports only.
                sec::Match {
                    destination_ports: exceptions,
                    ..Default::default()
                }
            };
            let converted = sec::Authorization {
                name: name.clone(),
                namespace: policy.namespace.clone(),
                scope: sec::Scope::WorkloadSelector as i32,
                action: sec::Action::Deny as i32,
                groups: vec![sec::Group {
                    rules: vec![no_principal(), sec::Rules { matches: vec![ports] }],
                }],
            };
            let key = format!("{}/{name}", policy.namespace);
            WorkloadMtls {
                policy_names: vec![key.clone()],
                converted: Some((key, converted)),
            }
        }
        _ if base_strict => WorkloadMtls {
            policy_names: vec![static_strict_key()],
            converted: None,
        },
        _ => WorkloadMtls {
            policy_names: Vec::new(),
            converted: None,
        },
    }
}

/// The workload-, namespace- and mesh-level policies for `workload`, in [`State::mtls_mode`]'s
/// precedence (the first in `namespace/name` order at each level).
fn chain<'s>(state: &'s State, workload: &Workload) -> [Option<&'s PeerAuthentication>; 3] {
    let all = || state.peer_authentications().map(|p| &**p);
    [
        all().find(|p| p.selects(workload)),
        all().find(|p| p.selector.is_none() && p.namespace == workload.namespace),
        all().find(|p| p.is_mesh_wide()),
    ]
}

fn no_principal() -> sec::Rules {
    sec::Rules {
        matches: vec![sec::Match {
            not_principals: vec![super::to_proto::string_match(&ambit_model::StringMatch::Presence)],
            ..Default::default()
        }],
    }
}

//! Model → proto, what the operator sends. Infallible: the model is already checked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ambit_model::authorization::{Match, PolicyScope};
use ambit_model::{
    Action, AuthorizationPolicy, Protocol, Service, State, StringMatch, Waypoint, WaypointAddress, Workload,
};
use ambit_proto::istio::security as sec;
use ambit_proto::istio::workload as wl;
use ipnet::IpNet;

use super::ConvertOptions;

/// Istio's uid of a pod: `<cluster>//Pod/<namespace>/<name>` (empty API group, kind `Pod`).
pub fn workload_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}

/// One workload for the wire. `mtls_policies` are the converted peer-authentication policy
/// names that apply to it ([`super::peer_authentication::for_workload`]); the selector
/// authorization policies that apply are looked up in `state`, and so are the services whose
/// selector picks the workload, because the wire carries memberships, not labels.
pub fn workload_to_proto(
    state: &State,
    workload: &Workload,
    mtls_policies: &[String],
    options: &ConvertOptions,
) -> wl::Workload {
    let mut services: BTreeMap<String, wl::PortList> = BTreeMap::new();
    for (key, ports) in &workload.services {
        let ports = if ports.is_empty() {
            // The model's "the service's own target ports", spelled out for Istio's ztunnel.
            state
                .services()
                .find(|s| s.endpoint_key() == *key)
                .map(|s| s.ports.clone())
                .unwrap_or_default()
        } else {
            ports.clone()
        };
        services.insert(key.clone(), port_list(&ports));
    }
    for service in state.services() {
        if !service.selector.is_empty()
            && service.namespace == workload.namespace
            && workload.matches_selector(&service.selector)
        {
            services
                .entry(service.endpoint_key())
                .or_insert_with(|| port_list(&service.ports));
        }
    }
    let mut authorization_policies: BTreeSet<String> = state
        .policies_for(workload)
        .filter(|p| {
            matches!(p.scope, PolicyScope::WorkloadSelector(_) | PolicyScope::Workloads(_)) && p.action != Action::Audit
        })
        .map(|p| p.key())
        .collect();
    authorization_policies.extend(mtls_policies.iter().cloned());

    wl::Workload {
        uid: workload_uid(&options.cluster_id, &workload.namespace, &workload.name),
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        addresses: workload.addresses.iter().map(ip_bytes).collect(),
        tunnel_protocol: match workload.protocol {
            Protocol::Tcp => wl::TunnelProtocol::None,
            _ => wl::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: workload.trust_domain.clone(),
        service_account: workload.service_account.clone(),
        waypoint: workload.waypoint.as_ref().map(gateway_address),
        node: workload.node.clone(),
        canonical_name: workload.workload_name.clone(),
        workload_type: wl::WorkloadType::Pod as i32,
        workload_name: workload.workload_name.clone(),
        services: services.into_iter().collect(),
        authorization_policies: authorization_policies.into_iter().collect(),
        status: wl::WorkloadStatus::Healthy as i32,
        cluster_id: options.cluster_id.clone(),
        ..Default::default()
    }
}

/// One service for the wire, named `namespace/hostname`.
pub fn service_to_proto(service: &Service) -> wl::Service {
    wl::Service {
        name: service.name.clone(),
        namespace: service.namespace.clone(),
        hostname: service.hostname.clone(),
        addresses: service.vips.iter().map(network_address).collect(),
        ports: port_list(&service.ports).ports,
        waypoint: service.waypoint.as_ref().map(gateway_address),
        ..Default::default()
    }
}

/// One authorization policy for the wire; `None` for AUDIT, which ztunnel's wire cannot carry.
pub fn authorization_to_proto(policy: &AuthorizationPolicy) -> Option<sec::Authorization> {
    let action = match policy.action {
        Action::Allow => sec::Action::Allow,
        Action::Deny => sec::Action::Deny,
        _ => return None,
    };
    let scope = match policy.scope {
        PolicyScope::Global => sec::Scope::Global,
        PolicyScope::Namespace => sec::Scope::Namespace,
        _ => sec::Scope::WorkloadSelector,
    };
    Some(sec::Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        groups: policy
            .rules
            .iter()
            .map(|rule| sec::Group {
                rules: rule
                    .clauses
                    .iter()
                    .map(|clause| sec::Rules {
                        matches: clause.matches.iter().map(match_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn match_to_proto(m: &Match) -> sec::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect();
    let nets = |v: &[IpNet]| v.iter().map(cidr).collect();
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    sec::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
    }
}

pub(super) fn string_match(m: &StringMatch) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let match_type = match m {
        StringMatch::Exact(v) => MatchType::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
        StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
        StringMatch::Presence => MatchType::Presence(()),
        // A future pattern kind travels in Istio's pattern syntax, which every kind has.
        other => MatchType::Exact(other.to_string()),
    };
    sec::StringMatch {
        match_type: Some(match_type),
    }
}

fn cidr(net: &IpNet) -> sec::Address {
    sec::Address {
        address: ip_bytes(&net.network()),
        length: u32::from(net.prefix_len()),
    }
}

fn port_list(ports: &[ambit_model::ServicePort]) -> wl::PortList {
    wl::PortList {
        ports: ports
            .iter()
            .map(|p| wl::Port {
                service_port: u32::from(p.port),
                target_port: u32::from(p.target_port),
            })
            .collect(),
    }
}

fn gateway_address(waypoint: &Waypoint) -> wl::GatewayAddress {
    use wl::gateway_address::Destination;
    let destination = match &waypoint.address {
        WaypointAddress::Hostname { namespace, hostname } => Destination::Hostname(wl::NamespacedHostname {
            namespace: namespace.clone(),
            hostname: hostname.clone(),
        }),
        WaypointAddress::Ip(ip) => Destination::Address(network_address(ip)),
        // A future address kind has no wire form yet; the receiver rejects an empty destination.
        _ => return wl::GatewayAddress::default(),
    };
    wl::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(waypoint.hbone_port),
    }
}

fn network_address(ip: &IpAddr) -> wl::NetworkAddress {
    wl::NetworkAddress {
        network: String::new(),
        address: ip_bytes(ip),
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

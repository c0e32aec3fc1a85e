//! Proto → model, what ztunnel receives. Every peer-supplied value is checked; the first bad
//! one becomes a [`ConvertError`] naming the resource, field and value (the client NACKs it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_model::authorization::{Clause, Match, PolicyScope, Rule};
use ambit_model::{
    Action, AuthorizationPolicy, Protocol, Service, ServicePort, StringMatch, Waypoint, WaypointAddress, Workload,
};
use ambit_proto::istio::security as sec;
use ambit_proto::istio::workload as wl;
use ipnet::IpNet;

use super::{ConvertError, ConvertOptions};

/// What one `Address` resource holds once converted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceivedAddress {
    Workload {
        workload: Workload,
        /// `namespace/name` of the `WORKLOAD_SELECTOR` authorizations that apply to it.
        authorization_policies: Vec<String>,
    },
    Service(Service),
}

/// Converts a received workload named `resource`; returns it with the names of the selector
/// policies that apply to it. Istio elides the default service account and trust domain.
pub fn workload_from_proto(
    resource: &str,
    w: wl::Workload,
    options: &ConvertOptions,
) -> Result<(Workload, Vec<String>), ConvertError> {
    non_empty(resource, "name", &w.name)?;
    non_empty(resource, "namespace", &w.namespace)?;
    if w.addresses.is_empty() {
        return Err(ConvertError::invalid(
            resource,
            "addresses",
            format!("[] (hostname {:?})", w.hostname),
            "a workload needs an IP address; hostname-only workloads are not supported",
        ));
    }
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, bytes)| ip_from_bytes(resource, &format!("addresses[{i}]"), bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(wl::TunnelProtocol::None) => Protocol::Tcp,
        Err(_) => {
            return Err(ConvertError::invalid(
                resource,
                "tunnel_protocol",
                w.tunnel_protocol,
                "unknown TunnelProtocol",
            ));
        }
    };
    let mut services = BTreeMap::new();
    for (key, list) in w.services {
        if !key.contains('/') {
            return Err(ConvertError::invalid(
                resource,
                "services",
                &key,
                "a service key is namespace/hostname",
            ));
        }
        let field = format!("services[{key}]");
        let ports = ports_from_proto(resource, &field, &list.ports)?;
        services.insert(key, ports);
    }
    let waypoint = w
        .waypoint
        .as_ref()
        .map(|g| waypoint_from_proto(resource, "waypoint", g))
        .transpose()?;
    let workload = Workload {
        name: w.name,
        namespace: w.namespace,
        service_account: if w.service_account.is_empty() {
            "default".to_owned()
        } else {
            w.service_account
        },
        node: w.node,
        addresses,
        labels: Default::default(),
        protocol,
        workload_name: w.workload_name,
        netns: None,
        trust_domain: if w.trust_domain.is_empty() {
            options.trust_domain.clone()
        } else {
            w.trust_domain
        },
        services,
        waypoint,
    };
    Ok((workload, w.authorization_policies))
}

/// Converts a received service named `resource`. It comes without a selector: its endpoints are
/// the workloads that list it in their `services`.
pub fn service_from_proto(resource: &str, s: wl::Service) -> Result<Service, ConvertError> {
    non_empty(resource, "name", &s.name)?;
    non_empty(resource, "namespace", &s.namespace)?;
    non_empty(resource, "hostname", &s.hostname)?;
    let vips = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip_from_bytes(resource, &format!("addresses[{i}].address"), &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = ports_from_proto(resource, "ports", &s.ports)?;
    let waypoint = s
        .waypoint
        .as_ref()
        .map(|g| waypoint_from_proto(resource, "waypoint", g))
        .transpose()?;
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        selector: Default::default(),
        waypoint,
    })
}

/// Converts a received authorization named `resource`.
pub fn authorization_from_proto(resource: &str, a: sec::Authorization) -> Result<AuthorizationPolicy, ConvertError> {
    non_empty(resource, "name", &a.name)?;
    non_empty(resource, "namespace", &a.namespace)?;
    let scope = match sec::Scope::try_from(a.scope) {
        Ok(sec::Scope::Global) => PolicyScope::Global,
        Ok(sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => PolicyScope::Workloads(BTreeMap::new()),
        Err(_) => return Err(ConvertError::invalid(resource, "scope", a.scope, "unknown Scope")),
    };
    let action = match sec::Action::try_from(a.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(ConvertError::invalid(resource, "action", a.action, "unknown Action")),
    };
    let mut rules = Vec::with_capacity(a.groups.len());
    for (g, group) in a.groups.iter().enumerate() {
        let mut clauses = Vec::with_capacity(group.rules.len());
        for (r, rule) in group.rules.iter().enumerate() {
            let matches = rule
                .matches
                .iter()
                .enumerate()
                .map(|(m, proto)| match_from_proto(resource, &format!("groups[{g}].rules[{r}].matches[{m}]"), proto))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(AuthorizationPolicy {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        rules,
    })
}

fn match_from_proto(resource: &str, path: &str, m: &sec::Match) -> Result<Match, ConvertError> {
    let strings = |field: &str, v: &[sec::StringMatch]| -> Result<Vec<StringMatch>, ConvertError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| string_match_from_proto(resource, &format!("{path}.{field}[{i}]"), s))
            .collect()
    };
    let nets = |field: &str, v: &[sec::Address]| -> Result<Vec<IpNet>, ConvertError> {
        v.iter()
            .enumerate()
            .map(|(i, a)| cidr_from_proto(resource, &format!("{path}.{field}[{i}]"), a))
            .collect()
    };
    let ports = |field: &str, v: &[u32]| -> Result<Vec<u16>, ConvertError> {
        v.iter()
            .enumerate()
            .map(|(i, p)| port(resource, &format!("{path}.{field}[{i}]"), *p))
            .collect()
    };
    Ok(Match {
        principals: strings("principals", &m.principals)?,
        not_principals: strings("not_principals", &m.not_principals)?,
        namespaces: strings("namespaces", &m.namespaces)?,
        not_namespaces: strings("not_namespaces", &m.not_namespaces)?,
        source_ips: nets("source_ips", &m.source_ips)?,
        not_source_ips: nets("not_source_ips", &m.not_source_ips)?,
        destination_ips: nets("destination_ips", &m.destination_ips)?,
        not_destination_ips: nets("not_destination_ips", &m.not_destination_ips)?,
        destination_ports: ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &m.not_destination_ports)?,
    })
}

fn string_match_from_proto(resource: &str, field: &str, s: &sec::StringMatch) -> Result<StringMatch, ConvertError> {
    use sec::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(ConvertError::invalid(
            resource,
            field,
            "{}",
            "a StringMatch needs a match type",
        )),
    }
}

fn cidr_from_proto(resource: &str, field: &str, a: &sec::Address) -> Result<IpNet, ConvertError> {
    let ip = ip_from_bytes(resource, &format!("{field}.address"), &a.address)?;
    let length = u8::try_from(a.length).ok();
    length
        .and_then(|len| IpNet::new(ip, len).ok())
        .map(|net| net.trunc())
        .ok_or_else(|| {
            ConvertError::invalid(
                resource,
                format!("{field}.length"),
                a.length,
                "prefix length longer than the address",
            )
        })
}

fn waypoint_from_proto(resource: &str, field: &str, g: &wl::GatewayAddress) -> Result<Waypoint, ConvertError> {
    use wl::gateway_address::Destination;
    let address = match &g.destination {
        Some(Destination::Hostname(h)) => {
            non_empty(resource, &format!("{field}.hostname.hostname"), &h.hostname)?;
            WaypointAddress::Hostname {
                namespace: h.namespace.clone(),
                hostname: h.hostname.clone(),
            }
        }
        Some(Destination::Address(a)) => WaypointAddress::Ip(ip_from_bytes(
            resource,
            &format!("{field}.address.address"),
            &a.address,
        )?),
        None => {
            return Err(ConvertError::invalid(
                resource,
                format!("{field}.destination"),
                "none",
                "a waypoint needs a hostname or an address",
            ));
        }
    };
    Ok(Waypoint {
        address,
        hbone_port: port(resource, &format!("{field}.hbone_mtls_port"), g.hbone_mtls_port)?,
    })
}

fn ports_from_proto(resource: &str, field: &str, ports: &[wl::Port]) -> Result<Vec<ServicePort>, ConvertError> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(ServicePort {
                port: port(resource, &format!("{field}[{i}].service_port"), p.service_port)?,
                target_port: port(resource, &format!("{field}[{i}].target_port"), p.target_port)?,
            })
        })
        .collect()
}

fn port(resource: &str, field: &str, value: u32) -> Result<u16, ConvertError> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConvertError::invalid(resource, field, value, "a port is 1 to 65535")),
    }
}

fn ip_from_bytes(resource: &str, field: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(ConvertError::invalid(
            resource,
            field,
            format!("{bytes:02x?}"),
            "an IP address is 4 or 16 bytes",
        ))
    }
}

fn non_empty(resource: &str, field: &str, value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        Err(ConvertError::invalid(resource, field, "\"\"", "must not be empty"))
    } else {
        Ok(())
    }
}

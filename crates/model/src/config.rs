//! The local config file ztunnel reads when there is no control plane: YAML in, a checked
//! [`LocalConfig`] out, or a [`ConfigError`] naming the line, field and value.
//!
//! This module owns the file format and its checks; watching the file and indexing the result
//! ([`crate::State`]) are elsewhere.

mod error;
mod raw;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::authorization::{AuthorizationPolicy, Clause, Match, PolicyScope, ROOT_NAMESPACE, Rule, StringMatch};
use crate::peer_authentication::{MtlsMode, PeerAuthentication};
use crate::service::{Service, ServicePort};
use crate::workload::Workload;

use error::FieldPath;
pub use error::{ConfigError, Location};
use raw::{RawAuthorizationPolicy, RawCondition, RawConfig, RawPeerAuthentication, RawRule, RawService, RawWorkload};

/// Trust domain when the file names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// DNS suffix of default service hostnames: `<name>.<namespace>.svc.cluster.local`.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// A parsed and checked local config: names unique per namespace, addresses unique mesh-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalConfig {
    pub trust_domain: String,
    pub mesh_defaults: MeshDefaults,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            mesh_defaults: MeshDefaults::default(),
            workloads: Vec::new(),
            services: Vec::new(),
            authorization_policies: Vec::new(),
            peer_authentications: Vec::new(),
        }
    }
}

impl FromStr for LocalConfig {
    type Err = ConfigError;

    fn from_str(yaml: &str) -> Result<Self, ConfigError> {
        parse(yaml)
    }
}

/// Settings that apply where no policy says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshDefaults {
    /// mTLS mode of workloads no peer authentication policy covers; `PERMISSIVE` by default.
    pub peer_authentication: MtlsMode,
}

/// Parses and checks a local config file.
pub fn parse(yaml: &str) -> Result<LocalConfig, ConfigError> {
    let raw: RawConfig = serde_norway::from_str(yaml).map_err(|e| ConfigError::from_yaml(&e))?;
    Lowering { yaml }.config(raw)
}

/// Turns the raw file into model types, checking what serde cannot see field by field.
struct Lowering<'a> {
    yaml: &'a str,
}

impl Lowering<'_> {
    fn invalid(&self, path: &FieldPath, reason: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.yaml, path, reason)
    }

    fn config(&self, raw: RawConfig) -> Result<LocalConfig, ConfigError> {
        let trust_domain = raw
            .trust_domain
            .map_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned(), |t| t.0);
        let mesh_defaults = MeshDefaults {
            peer_authentication: raw
                .mesh_defaults
                .and_then(|d| d.peer_authentication)
                .unwrap_or_default(),
        };
        self.unique_names(
            "workloads",
            "workload",
            raw.workloads.iter().map(|w| (&w.namespace.0, &w.name.0)),
        )?;
        self.unique_names(
            "services",
            "service",
            raw.services.iter().map(|s| (&s.namespace.0, &s.name.0)),
        )?;
        self.unique_names(
            "authorizationPolicies",
            "authorization policy",
            raw.authorization_policies.iter().map(|p| (&p.namespace.0, &p.name.0)),
        )?;
        self.unique_names(
            "peerAuthentications",
            "peer authentication",
            raw.peer_authentications.iter().map(|p| (&p.namespace.0, &p.name.0)),
        )?;

        let mut addresses = AddressBook::default();
        let workloads = raw
            .workloads
            .into_iter()
            .enumerate()
            .map(|(index, w)| self.workload(index, w, &trust_domain, &mut addresses))
            .collect::<Result<Vec<_>, _>>()?;
        let services = self.services(raw.services, &mut addresses)?;
        let authorization_policies = raw
            .authorization_policies
            .into_iter()
            .enumerate()
            .map(|(index, p)| self.authorization_policy(index, p))
            .collect::<Result<Vec<_>, _>>()?;
        let peer_authentications = raw.peer_authentications.into_iter().map(peer_authentication).collect();
        Ok(LocalConfig {
            trust_domain,
            mesh_defaults,
            workloads,
            services,
            authorization_policies,
            peer_authentications,
        })
    }

    /// Refuses a second object of one kind with the same `namespace/name`.
    fn unique_names<'r>(
        &self,
        section: &str,
        kind: &str,
        names: impl Iterator<Item = (&'r String, &'r String)>,
    ) -> Result<(), ConfigError> {
        let mut seen = HashMap::new();
        for (index, (namespace, name)) in names.enumerate() {
            if let Some(first) = seen.insert((namespace, name), index) {
                return Err(self.invalid(
                    &FieldPath::root().key(section).index(index).key("name"),
                    format!("{kind} \"{namespace}/{name}\" is already defined at {section}[{first}]"),
                ));
            }
        }
        Ok(())
    }

    fn workload(
        &self,
        index: usize,
        raw: RawWorkload,
        trust_domain: &str,
        addresses: &mut AddressBook,
    ) -> Result<Workload, ConfigError> {
        let path = FieldPath::root().key("workloads").index(index);
        let key = format!("{}/{}", raw.namespace.0, raw.name.0);
        if raw.addresses.is_empty() {
            return Err(self.invalid(
                &path.key("addresses"),
                format!("workload \"{key}\" needs at least one address"),
            ));
        }
        for (n, ip) in raw.addresses.iter().enumerate() {
            let at = path.key("addresses").index(n);
            addresses
                .claim(ip.0, &at, format!("workload \"{key}\""))
                .map_err(|reason| self.invalid(&at, reason))?;
        }
        let workload_name = raw.workload_name.map_or_else(|| raw.name.0.clone(), |n| n.0);
        Ok(Workload {
            name: raw.name.0,
            namespace: raw.namespace.0,
            service_account: raw.service_account.map_or_else(|| "default".to_owned(), |sa| sa.0),
            node: raw.node.0,
            addresses: raw.addresses.into_iter().map(|ip| ip.0).collect(),
            labels: raw.labels,
            protocol: raw.protocol.unwrap_or_default(),
            workload_name,
            netns: raw.netns.map(|p| p.0),
            trust_domain: trust_domain.to_owned(),
            services: BTreeMap::new(),
            waypoint: None,
        })
    }

    fn services(&self, raws: Vec<RawService>, addresses: &mut AddressBook) -> Result<Vec<Service>, ConfigError> {
        let mut hostnames: HashMap<String, usize> = HashMap::new();
        let mut services = Vec::with_capacity(raws.len());
        for (index, raw) in raws.into_iter().enumerate() {
            let path = FieldPath::root().key("services").index(index);
            let key = format!("{}/{}", raw.namespace.0, raw.name.0);
            let hostname = raw.hostname.map_or_else(
                || format!("{}.{}.svc.{DEFAULT_DOMAIN_SUFFIX}", raw.name.0, raw.namespace.0),
                |h| h.0,
            );
            if let Some(first) = hostnames.insert(hostname.clone(), index) {
                return Err(self.invalid(
                    &path.key("hostname"),
                    format!("hostname \"{hostname}\" is already used by services[{first}]"),
                ));
            }
            for (n, vip) in raw.vips.iter().enumerate() {
                let at = path.key("vips").index(n);
                addresses
                    .claim(vip.0, &at, format!("service \"{key}\""))
                    .map_err(|reason| self.invalid(&at, reason))?;
            }
            let mut ports: Vec<ServicePort> = Vec::with_capacity(raw.ports.len());
            for (n, port) in raw.ports.iter().enumerate() {
                if let Some(first) = ports.iter().position(|p| p.port == port.port.0) {
                    return Err(self.invalid(
                        &path.key("ports").index(n).key("port"),
                        format!(
                            "port {} is already listed at services[{index}].ports[{first}]",
                            port.port.0
                        ),
                    ));
                }
                ports.push(ServicePort {
                    port: port.port.0,
                    target_port: port.target_port.unwrap_or(port.port).0,
                });
            }
            services.push(Service {
                name: raw.name.0,
                namespace: raw.namespace.0,
                hostname,
                vips: raw.vips.into_iter().map(|ip| ip.0).collect(),
                ports,
                selector: raw.selector,
                waypoint: None,
            });
        }
        Ok(services)
    }

    fn authorization_policy(
        &self,
        index: usize,
        raw: RawAuthorizationPolicy,
    ) -> Result<AuthorizationPolicy, ConfigError> {
        let path = FieldPath::root().key("authorizationPolicies").index(index);
        let scope = match raw.selector {
            Some(selector) => PolicyScope::WorkloadSelector(selector),
            None if raw.namespace.0 == ROOT_NAMESPACE => PolicyScope::Global,
            None => PolicyScope::Namespace,
        };
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(n, rule)| self.rule(&path.key("rules").index(n), rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthorizationPolicy {
            name: raw.name.0,
            namespace: raw.namespace.0,
            scope,
            action: raw.action,
            rules,
        })
    }

    /// Istio's translation: `from` is one clause of sources, `to` one of operations, and each
    /// `when` condition a clause of its own; an absent or empty list adds no clause.
    fn rule(&self, path: &FieldPath, raw: RawRule) -> Result<Rule, ConfigError> {
        let mut clauses = Vec::new();
        if !raw.from.is_empty() {
            let matches = raw.from.into_iter().map(|source| Match {
                principals: patterns(source.principals),
                not_principals: patterns(source.not_principals),
                namespaces: patterns(source.namespaces),
                not_namespaces: patterns(source.not_namespaces),
                source_ips: source.ip_blocks.into_iter().map(|c| c.0).collect(),
                not_source_ips: source.not_ip_blocks.into_iter().map(|c| c.0).collect(),
                ..Match::default()
            });
            clauses.push(Clause {
                matches: matches.collect(),
            });
        }
        if !raw.to.is_empty() {
            let matches = raw.to.into_iter().map(|operation| Match {
                destination_ports: operation.ports.into_iter().map(|p| p.0).collect(),
                not_destination_ports: operation.not_ports.into_iter().map(|p| p.0).collect(),
                ..Match::default()
            });
            clauses.push(Clause {
                matches: matches.collect(),
            });
        }
        for (n, condition) in raw.when.into_iter().enumerate() {
            let matched = self.condition(&path.key("when").index(n), condition)?;
            clauses.push(Clause { matches: vec![matched] });
        }
        Ok(Rule { clauses })
    }

    fn condition(&self, path: &FieldPath, raw: RawCondition) -> Result<Match, ConfigError> {
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(self.invalid(path, format!("condition on {:?} needs values or notValues", raw.key)));
        }
        let mut matched = Match::default();
        match raw.key.as_str() {
            "source.ip" | "remote.ip" => {
                (matched.source_ips, matched.not_source_ips) = self.condition_values(path, &raw, raw::parse_cidr)?;
            }
            "destination.ip" => {
                (matched.destination_ips, matched.not_destination_ips) =
                    self.condition_values(path, &raw, raw::parse_cidr)?;
            }
            "destination.port" => {
                (matched.destination_ports, matched.not_destination_ports) =
                    self.condition_values(path, &raw, raw::parse_port)?;
            }
            "source.principal" => {
                (matched.principals, matched.not_principals) = self.condition_values(path, &raw, parse_pattern_text)?;
            }
            "source.namespace" => {
                (matched.namespaces, matched.not_namespaces) = self.condition_values(path, &raw, parse_pattern_text)?;
            }
            other => {
                return Err(self.invalid(
                    &path.key("key"),
                    format!(
                        "{other:?} is not an L4 condition key; expected one of source.ip, \
                         remote.ip, source.principal, source.namespace, destination.ip, \
                         destination.port"
                    ),
                ));
            }
        }
        Ok(matched)
    }

    /// Parses a condition's `values` and `notValues` as the key's type.
    fn condition_values<T>(
        &self,
        path: &FieldPath,
        raw: &RawCondition,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<(Vec<T>, Vec<T>), ConfigError> {
        let list = |field: &str, texts: &[String]| {
            texts
                .iter()
                .enumerate()
                .map(|(n, text)| parse(text).map_err(|reason| self.invalid(&path.key(field).index(n), reason)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((list("values", &raw.values)?, list("notValues", &raw.not_values)?))
    }
}

fn patterns(list: Vec<raw::Pattern>) -> Vec<StringMatch> {
    list.into_iter().map(|p| p.0).collect()
}

fn parse_pattern_text(text: &str) -> Result<StringMatch, String> {
    if text.is_empty() {
        Err("an empty pattern matches nothing; use \"*\" for any value".to_owned())
    } else {
        Ok(StringMatch::parse(text))
    }
}

fn peer_authentication(raw: RawPeerAuthentication) -> PeerAuthentication {
    PeerAuthentication {
        name: raw.name.0,
        namespace: raw.namespace.0,
        selector: raw.selector,
        mode: raw.mode.resolve(),
        port_level_mtls: raw
            .port_level_mtls
            .into_iter()
            .map(|(port, mode)| (port.0, mode.0.resolve()))
            .collect(),
    }
}

/// Who owns each workload address and service VIP, so no IP means two things.
#[derive(Default)]
struct AddressBook(HashMap<IpAddr, (String, String)>);

impl AddressBook {
    /// Records `owner` (e.g. `workload "default/a"`) at `path` for `ip`, or says who has it.
    fn claim(&mut self, ip: IpAddr, path: &FieldPath, owner: String) -> Result<(), String> {
        match self.0.entry(ip.to_canonical()) {
            Entry::Occupied(taken) => {
                let (first_owner, first_path) = taken.get();
                Err(format!("{ip} is already an address of {first_owner} at {first_path}"))
            }
            Entry::Vacant(free) => {
                free.insert((owner, path.to_string()));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;

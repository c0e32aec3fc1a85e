//! The YAML shapes of the local config file as serde reads them, camelCase and closed to unknown
//! fields. Scalars are parsed into their final types here (IPs, CIDRs, ports, names, modes), so a
//! bad value fails with serde_norway's line, column and field path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::authorization::{Action, StringMatch};
use crate::peer_authentication::MtlsMode;
use crate::workload::{Labels, Protocol};

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "a mapping of trustDomain, meshDefaults, workloads, services, authorizationPolicies, peerAuthentications",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(super) struct RawConfig {
    pub trust_domain: Option<TrustDomain>,
    pub mesh_defaults: Option<RawMeshDefaults>,
    #[serde(default)]
    pub workloads: Vec<RawWorkload>,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub authorization_policies: Vec<RawAuthorizationPolicy>,
    #[serde(default)]
    pub peer_authentications: Vec<RawPeerAuthentication>,
}

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "a mapping of mesh defaults",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(super) struct RawMeshDefaults {
    pub peer_authentication: Option<MtlsMode>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a workload mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawWorkload {
    pub name: Name,
    pub namespace: Namespace,
    pub service_account: Option<Name>,
    pub node: Name,
    pub addresses: Vec<Ip>,
    #[serde(default)]
    pub labels: Labels,
    pub protocol: Option<Protocol>,
    pub workload_name: Option<Name>,
    pub netns: Option<AbsolutePath>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a service mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Name,
    pub namespace: Namespace,
    pub hostname: Option<Name>,
    #[serde(default)]
    pub vips: Vec<Ip>,
    #[serde(default)]
    pub ports: Vec<RawServicePort>,
    #[serde(default)]
    pub selector: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a service port mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawServicePort {
    pub port: Port,
    pub target_port: Option<Port>,
}

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "an authorization policy mapping",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(super) struct RawAuthorizationPolicy {
    pub name: Name,
    pub namespace: Namespace,
    pub selector: Option<Labels>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a rule mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub from: Vec<RawSource>,
    #[serde(default)]
    pub to: Vec<RawOperation>,
    #[serde(default)]
    pub when: Vec<RawCondition>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a source mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(default)]
    pub principals: Vec<Pattern>,
    #[serde(default)]
    pub not_principals: Vec<Pattern>,
    #[serde(default)]
    pub namespaces: Vec<Pattern>,
    #[serde(default)]
    pub not_namespaces: Vec<Pattern>,
    #[serde(default)]
    pub ip_blocks: Vec<Cidr>,
    #[serde(default)]
    pub not_ip_blocks: Vec<Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an operation mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawOperation {
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub not_ports: Vec<Port>,
}

/// A `when` condition; its values are read once the key says what they are.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a condition mapping", rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawCondition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    expecting = "a peer authentication mapping",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(super) struct RawPeerAuthentication {
    pub name: Name,
    pub namespace: Namespace,
    pub selector: Option<Labels>,
    #[serde(default)]
    pub mode: RawMode,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<Port, PortMode>,
}

/// A peer authentication mode, where `UNSET` (or no mode) inherits.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(super) enum RawMode {
    #[default]
    Unset,
    Strict,
    Permissive,
    Disable,
}

impl RawMode {
    pub(super) fn resolve(self) -> Option<MtlsMode> {
        match self {
            Self::Unset => None,
            Self::Strict => Some(MtlsMode::Strict),
            Self::Permissive => Some(MtlsMode::Permissive),
            Self::Disable => Some(MtlsMode::Disable),
        }
    }
}

/// A `portLevelMtls` value: `STRICT`, or Istio's `{ mode: STRICT }`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PortMode(pub RawMode);

impl<'de> Deserialize<'de> for PortMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortModeVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Nested {
            #[serde(default)]
            mode: RawMode,
        }

        impl<'de> Visitor<'de> for PortModeVisitor {
            type Value = PortMode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mode (STRICT, PERMISSIVE, DISABLE, UNSET) or { mode: ... }")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<PortMode, E> {
                RawMode::deserialize(de::value::StrDeserializer::<E>::new(value)).map(PortMode)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PortMode, A::Error> {
                Nested::deserialize(de::value::MapAccessDeserializer::new(map)).map(|nested| PortMode(nested.mode))
            }
        }

        deserializer.deserialize_any(PortModeVisitor)
    }
}

/// Reads a scalar as text and parses it with `parse`, whose error names the value.
fn parse_scalar<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct ScalarVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }

    impl<T> Visitor<'_> for ScalarVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
            (self.parse)(value).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(ScalarVisitor { expecting, parse })
}

macro_rules! scalar_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expecting:literal, $parse:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(super) struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                parse_scalar(deserializer, $expecting, $parse).map($name)
            }
        }
    };
}

scalar_type!(Ip(IpAddr), "an IP address", parse_ip);
scalar_type!(
    /// A CIDR block; a bare IP is a block of one address.
    Cidr(IpNet),
    "a CIDR block",
    parse_cidr
);
scalar_type!(
    /// An object name (RFC 1123 subdomain), e.g. a pod, service, node or policy name.
    Name(String),
    "a name",
    parse_name
);
scalar_type!(
    /// A namespace name (RFC 1123 label).
    Namespace(String),
    "a namespace name",
    parse_namespace
);
scalar_type!(
    /// A SPIFFE trust domain.
    TrustDomain(String),
    "a trust domain",
    parse_trust_domain
);
scalar_type!(AbsolutePath(PathBuf), "an absolute path", parse_absolute_path);
scalar_type!(
    /// An Istio string pattern: exact, `*`, `prefix*` or `*suffix`.
    Pattern(StringMatch),
    "a pattern",
    parse_pattern
);

pub(super) fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| format!("{text:?} is not an IP address"))
}

pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR block or IP address"))
}

fn parse_name(text: &str) -> Result<String, String> {
    let valid = (1..=253).contains(&text.len()) && text.split('.').all(|label| is_dns_label(label, 63));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a valid name: use lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ))
    }
}

fn parse_namespace(text: &str) -> Result<String, String> {
    if is_dns_label(text, 63) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a valid namespace: use at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

fn is_dns_label(label: &str, max: usize) -> bool {
    let bytes = label.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=max).contains(&bytes.len())
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
}

fn parse_trust_domain(text: &str) -> Result<String, String> {
    let valid = (1..=255).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a valid trust domain: use lowercase letters, digits, '.', '-' and '_'"
        ))
    }
}

fn parse_absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.starts_with('/') {
        Ok(PathBuf::from(text))
    } else {
        Err(format!("{text:?} is not an absolute path"))
    }
}

fn parse_pattern(text: &str) -> Result<StringMatch, String> {
    if text.is_empty() {
        Err("an empty pattern matches nothing; use \"*\" for any value".to_owned())
    } else {
        Ok(StringMatch::parse(text))
    }
}

/// A TCP port, 1-65535, written as a number (or a numeric string, as Istio writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Port(pub u16);

pub(super) fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u64>()
        .map_err(|_| format!("{text:?} is not a port number (1-65535)"))
        .and_then(port_from_number)
}

fn port_from_number(number: u64) -> Result<u16, String> {
    u16::try_from(number)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{number} is not a port number (1-65535)"))
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;

        impl Visitor<'_> for PortVisitor {
            type Value = Port;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Port, E> {
                port_from_number(value).map(Port).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Port, E> {
                u64::try_from(value)
                    .map_err(|_| format!("{value} is not a port number (1-65535)"))
                    .and_then(port_from_number)
                    .map(Port)
                    .map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Port, E> {
                Err(E::custom(format!("{value} is not a port number (1-65535)")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Port, E> {
                parse_port(value).map(Port).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(PortVisitor)
    }
}

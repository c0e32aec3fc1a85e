//! L4 authorization policies and the decision ztunnel takes on each inbound connection.
//!
//! Policies mirror `istio.security.Authorization`: a policy matches when any of its rules does, a
//! rule when all of its clauses do, a clause when any of its matches does, and a match when every
//! field it sets holds. Which policies apply to which workload is decided here too; finding the
//! destination workload is [`crate::State`]'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::workload::{Labels, Workload};

/// Namespace whose selector-less policies apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = "ambit-system";

/// An authorization policy, already translated from Istio's `from`/`to`/`when` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: Action,
    /// The policy matches when any rule matches; no rules never match.
    pub rules: Vec<Rule>,
}

impl AuthorizationPolicy {
    /// `<namespace>/<name>`, the name reported in decisions and metrics.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy governs connections to `workload`.
    ///
    /// Selector policies apply to matching workloads of their own namespace, or of every namespace
    /// when the policy lives in [`ROOT_NAMESPACE`] (as in Istio).
    pub fn applies_to(&self, workload: &Workload) -> bool {
        match &self.scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => self.namespace == workload.namespace,
            PolicyScope::WorkloadSelector(selector) => {
                (self.namespace == workload.namespace || self.namespace == ROOT_NAMESPACE)
                    && workload.matches_selector(selector)
            }
            PolicyScope::Workloads(names) => names
                .get(&workload.namespace)
                .is_some_and(|names| names.contains(&workload.name)),
        }
    }

    /// Whether the connection matches any rule of this policy.
    pub fn matches(&self, conn: &ConnectionInfo<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(conn))
    }
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum PolicyScope {
    /// Every workload in the mesh: a policy in [`ROOT_NAMESPACE`] without a selector.
    Global,
    /// Every workload of the policy's namespace.
    Namespace,
    /// Workloads whose labels contain the selector.
    WorkloadSelector(Labels),
    /// The workloads listed, namespace to pod names. This is how selector policies arrive over
    /// xDS: the wire carries no labels, each workload names the policies that select it instead.
    Workloads(BTreeMap<String, BTreeSet<String>>),
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Action {
    /// Once any ALLOW policy applies to a workload, only matching connections are allowed.
    #[default]
    Allow,
    /// Matching connections are refused, whatever the ALLOW policies say.
    Deny,
    /// Matching connections are reported; the decision is unchanged.
    Audit,
}

/// One Istio rule (a `Group` on the wire): matches when all its clauses match.
/// A rule without clauses (`{}` in YAML) matches every connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

impl Rule {
    pub fn matches(&self, conn: &ConnectionInfo<'_>) -> bool {
        self.clauses.iter().all(|clause| clause.matches(conn))
    }
}

/// One `from`, `to` or `when` entry of a rule (`Rules` on the wire): matches when any match does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

impl Clause {
    pub fn matches(&self, conn: &ConnectionInfo<'_>) -> bool {
        self.matches.iter().any(|m| m.matches(conn))
    }
}

/// A conjunction of conditions on a connection; an empty list places no condition, a `not_*`
/// list excludes connections that match any of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    /// Whether the connection satisfies every condition. A plaintext peer has no principal and
    /// no namespace, so it never matches `principals`/`namespaces` and never hits their `not_*`.
    pub fn matches(&self, conn: &ConnectionInfo<'_>) -> bool {
        let principal = conn.source_principal;
        let namespace = conn.peer_namespace();
        let source_ip = conn.source_ip.to_canonical();
        let destination_ip = conn.destination_ip.to_canonical();
        holds(&self.principals, &self.not_principals, |p| {
            principal.is_some_and(|v| p.matches(v))
        }) && holds(&self.namespaces, &self.not_namespaces, |p| {
            namespace.is_some_and(|v| p.matches(v))
        }) && holds(&self.source_ips, &self.not_source_ips, |net| net.contains(&source_ip))
            && holds(&self.destination_ips, &self.not_destination_ips, |net| {
                net.contains(&destination_ip)
            })
            && holds(&self.destination_ports, &self.not_destination_ports, |port| {
                *port == conn.destination_port
            })
    }
}

/// `positive` is empty or has a hit, and `negative` has none.
fn holds<T>(positive: &[T], negative: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hit)) && !negative.iter().any(&hit)
}

/// Istio's string matching for principals and namespaces: `*` (present), `foo*`, `*foo`, exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value, i.e. any authenticated peer.
    Presence,
}

impl StringMatch {
    /// Reads Istio's pattern syntax; every string is a valid pattern.
    pub fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(pattern.to_owned())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
            Self::Presence => f.write_str("*"),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the destination side knows about an inbound connection when it authorizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo<'a> {
    /// Peer identity `<td>/ns/<ns>/sa/<sa>` from its certificate; `None` for plaintext.
    pub source_principal: Option<&'a str>,
    /// Peer namespace; when `None` it is read from `source_principal`.
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl<'a> ConnectionInfo<'a> {
    /// The namespace policies match on: the given one, else the one in the principal.
    pub fn peer_namespace(&self) -> Option<&'a str> {
        self.source_namespace
            .or_else(|| self.source_principal.and_then(principal_namespace))
    }
}

/// The namespace of a principal `<td>/ns/<ns>/sa/<sa>`, if it has that shape.
pub fn principal_namespace(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    let (_trust_domain, ns, namespace, sa, _service_account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (parts.next().is_none() && ns == "ns" && sa == "sa" && !namespace.is_empty()).then_some(namespace)
}

/// The outcome of authorizing one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzDecision {
    pub allowed: bool,
    /// `<namespace>/<name>` of the policy that decided: the matching DENY, or the matching ALLOW.
    /// `None` when no policy applies (allowed) or when no ALLOW matched (default deny).
    pub policy: Option<String>,
    /// `<namespace>/<name>` of every matching AUDIT policy.
    pub audited: Vec<String>,
}

/// Istio's precedence over the policies that apply to the destination: AUDIT matches are
/// recorded; a matching DENY refuses; with no ALLOW policy the connection is allowed; otherwise
/// it is allowed only if some ALLOW matches.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p AuthorizationPolicy>,
    conn: &ConnectionInfo<'_>,
) -> AuthzDecision {
    let mut audited = Vec::new();
    let mut denied_by = None;
    let mut any_allow = false;
    let mut allowed_by = None;
    for policy in policies {
        match policy.action {
            Action::Audit => {
                if policy.matches(conn) {
                    audited.push(policy.key());
                }
            }
            Action::Deny => {
                if denied_by.is_none() && policy.matches(conn) {
                    denied_by = Some(policy.key());
                }
            }
            Action::Allow => {
                any_allow = true;
                if allowed_by.is_none() && policy.matches(conn) {
                    allowed_by = Some(policy.key());
                }
            }
        }
    }
    match (denied_by, allowed_by) {
        (Some(deny), _) => AuthzDecision {
            allowed: false,
            policy: Some(deny),
            audited,
        },
        (None, Some(allow)) => AuthzDecision {
            allowed: true,
            policy: Some(allow),
            audited,
        },
        (None, None) => AuthzDecision {
            allowed: !any_allow,
            policy: None,
            audited,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_patterns() {
        let id = "cluster.local/ns/default/sa/sleep";
        assert_eq!(StringMatch::parse(id), StringMatch::Exact(id.into()));
        assert!(StringMatch::parse(id).matches(id));
        assert!(!StringMatch::parse(id).matches("cluster.local/ns/default/sa/sleepy"));
        assert!(StringMatch::parse("cluster.local/ns/default/*").matches(id));
        assert!(!StringMatch::parse("cluster.local/ns/other/*").matches(id));
        assert!(StringMatch::parse("*/sa/sleep").matches(id));
        assert!(!StringMatch::parse("*/sa/echo").matches(id));
        assert!(StringMatch::parse("*").matches(id));
        assert!(!StringMatch::parse("*").matches(""));
        for pattern in ["*", "a*", "*a", "a"] {
            assert_eq!(StringMatch::parse(pattern).to_string(), pattern);
        }
    }

    #[test]
    fn listed_workloads_scope_applies_only_to_them() {
        let workload = |namespace: &str, name: &str| Workload {
            name: name.into(),
            namespace: namespace.into(),
            service_account: "default".into(),
            node: "n".into(),
            addresses: Vec::new(),
            labels: Labels::new(),
            protocol: crate::Protocol::Hbone,
            workload_name: name.into(),
            netns: None,
            trust_domain: "cluster.local".into(),
            services: BTreeMap::new(),
            waypoint: None,
        };
        let listed = BTreeMap::from([("a".to_owned(), BTreeSet::from(["x".to_owned()]))]);
        let policy = AuthorizationPolicy {
            name: "p".into(),
            namespace: ROOT_NAMESPACE.into(),
            scope: PolicyScope::Workloads(listed),
            action: Action::Deny,
            rules: Vec::new(),
        };
        assert!(policy.applies_to(&workload("a", "x")));
        assert!(!policy.applies_to(&workload("a", "y")));
        assert!(!policy.applies_to(&workload("b", "x")));
    }

    #[test]
    fn principal_namespace_shapes() {
        assert_eq!(principal_namespace("td/ns/foo/sa/bar"), Some("foo"));
        assert_eq!(principal_namespace("td/ns/foo/sa/bar/x"), None);
        assert_eq!(principal_namespace("td/ns//sa/bar"), None);
        assert_eq!(principal_namespace("spiffe-less"), None);
    }
}

//! SPIFFE workload identities in the Kubernetes form `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! Owns parsing, validation and formatting of the ID only; reading it out of a certificate
//! lives in `tls`, and issuing certificates for it in `ca`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";

/// Which part of a SPIFFE ID a validation error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpiffePart {
    TrustDomain,
    Namespace,
    ServiceAccount,
}

impl fmt::Display for SpiffePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpiffePart::TrustDomain => "trust domain",
            SpiffePart::Namespace => "namespace",
            SpiffePart::ServiceAccount => "service account",
        })
    }
}

/// Why a string or its parts are not a SPIFFE ID we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("{value:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    MissingScheme { value: String },
    #[error(
        "{value:?} is not a workload SPIFFE ID: expected \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    BadPath { value: String },
    #[error("invalid {part} {value:?} in SPIFFE ID: {reason}")]
    InvalidPart {
        part: SpiffePart,
        value: String,
        reason: &'static str,
    },
}

/// A validated workload identity: trust domain, namespace and service account.
///
/// Ordering and hashing follow the parts, so IDs can key maps and sets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking each one.
    ///
    /// The trust domain takes lowercase letters, digits, `.`, `-` and `_` (SPIFFE spec);
    /// the namespace must be a Kubernetes DNS label and the service account a Kubernetes
    /// DNS subdomain, which is what the API server would have admitted.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_k8s_name(SpiffePart::Namespace, namespace, 63, false)?;
        validate_k8s_name(SpiffePart::ServiceAccount, service_account, 253, true)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The Istio "principal" form used in authorization policies: the URI without its scheme,
    /// `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let rest = value.strip_prefix(SCHEME).ok_or_else(|| SpiffeIdError::MissingScheme {
            value: value.to_owned(),
        })?;
        let bad_path = || SpiffeIdError::BadPath {
            value: value.to_owned(),
        };
        let mut segments = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(bad_path());
        };
        Self::new(td, ns, sa)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a trust domain name on its own, e.g. before creating a CA for it.
pub fn validate_trust_domain(value: &str) -> Result<(), SpiffeIdError> {
    let invalid = |reason| SpiffeIdError::InvalidPart {
        part: SpiffePart::TrustDomain,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    // SPIFFE caps the trust domain at 255 bytes, like a DNS name.
    if value.len() > 255 {
        return Err(invalid("must be at most 255 characters"));
    }
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("must be lowercase"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid("may only contain lowercase letters, digits, '.', '-' and '_'"));
    }
    Ok(())
}

/// RFC 1123 label (`dots == false`) or subdomain (`dots == true`), as Kubernetes validates names.
fn validate_k8s_name(part: SpiffePart, value: &str, max_len: usize, dots: bool) -> Result<(), SpiffeIdError> {
    let invalid = |reason| SpiffeIdError::InvalidPart {
        part,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > max_len {
        return Err(invalid(if dots {
            "must be at most 253 characters"
        } else {
            "must be at most 63 characters"
        }));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    if !value.bytes().all(allowed) {
        return Err(invalid(if dots {
            "may only contain lowercase letters, digits, '-' and '.'"
        } else {
            "may only contain lowercase letters, digits and '-'"
        }));
    }
    let alphanumeric = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !alphanumeric(value.bytes().next()) || !alphanumeric(value.bytes().last()) {
        return Err(invalid("must start and end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        s.parse()
    }

    #[test]
    fn round_trips_uri_and_parts() {
        let uri = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id = parse(uri).expect("valid id");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), uri);
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/bookinfo-productpage");
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "bookinfo-productpage"),
            Ok(id)
        );
    }

    #[test]
    fn serde_uses_the_uri_string() {
        let id = SpiffeId::new("td", "ns1", "sa.one").expect("valid id");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"spiffe://td/ns/ns1/sa/sa.one\"");
        let back: SpiffeId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/ns/x\"").expect_err("bad id must not deserialize");
        assert!(err.to_string().contains("spiffe://td/ns/x"), "{err}");
    }

    #[test]
    fn rejects_wrong_scheme() {
        for s in ["https://td/ns/a/sa/b", "SPIFFE://td/ns/a/sa/b", "td/ns/a/sa/b", ""] {
            assert!(matches!(parse(s), Err(SpiffeIdError::MissingScheme { .. })), "{s}");
        }
    }

    #[test]
    fn rejects_bad_paths() {
        for s in [
            "spiffe://td",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/namespace/a/sa/b",
            "spiffe://td/ns/a/serviceaccount/b",
            "spiffe://td/sa/b/ns/a",
        ] {
            let err = parse(s).expect_err(s);
            assert!(matches!(err, SpiffeIdError::BadPath { .. }), "{s}: {err}");
            assert!(err.to_string().contains(s), "message names the value: {err}");
        }
    }

    #[test]
    fn rejects_bad_parts_naming_the_part() {
        let cases = [
            ("spiffe:///ns/a/sa/b", SpiffePart::TrustDomain),
            ("spiffe://Cluster.Local/ns/a/sa/b", SpiffePart::TrustDomain),
            ("spiffe://td:8080/ns/a/sa/b", SpiffePart::TrustDomain),
            ("spiffe://td/ns//sa/b", SpiffePart::Namespace),
            ("spiffe://td/ns/Default/sa/b", SpiffePart::Namespace),
            ("spiffe://td/ns/a.b/sa/b", SpiffePart::Namespace),
            ("spiffe://td/ns/-a/sa/b", SpiffePart::Namespace),
            ("spiffe://td/ns/a/sa/", SpiffePart::ServiceAccount),
            ("spiffe://td/ns/a/sa/b_c", SpiffePart::ServiceAccount),
            ("spiffe://td/ns/a/sa/b-", SpiffePart::ServiceAccount),
        ];
        for (s, want) in cases {
            match parse(s) {
                Err(SpiffeIdError::InvalidPart { part, ref value, .. }) => {
                    assert_eq!(part, want, "{s}");
                    let msg = parse(s).expect_err(s).to_string();
                    assert!(msg.contains(&want.to_string()), "{msg}");
                    assert!(msg.contains(&format!("{value:?}")), "{msg}");
                }
                other => panic!("{s}: expected InvalidPart({want}), got {other:?}"),
            }
        }
    }

    #[test]
    fn length_limits() {
        let long_label = "a".repeat(64);
        assert!(SpiffeId::new("td", &long_label, "sa").is_err());
        assert!(SpiffeId::new("td", &long_label[..63], "sa").is_ok());
        assert!(SpiffeId::new("td", "ns", &"a".repeat(254)).is_err());
        assert!(SpiffeId::new(&"a".repeat(256), "ns", "sa").is_err());
    }
}

//! `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`, spec "Parameters" and libcni's convention) and the
//! Kubernetes pod identity in it. Keys we do not know are refused unless the runtime adds
//! `IgnoreUnknown=1`, as containerd and CRI-O do; names are checked against Kubernetes' rules.

use crate::error::Quoted;

/// Keys of `CNI_ARGS` that we read (or know and skip).
const IGNORE_UNKNOWN: &str = "IgnoreUnknown";
const POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
const POD_NAME: &str = "K8S_POD_NAME";
const POD_UID: &str = "K8S_POD_UID";
/// Set by kubelet-era runtimes; known so that it needs no `IgnoreUnknown`, but unused.
const POD_INFRA_CONTAINER_ID: &str = "K8S_POD_INFRA_CONTAINER_ID";

/// What is wrong with `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    #[error("CNI_ARGS entry {} has no `=`; expected KEY=VALUE pairs separated by `;`", Quoted(.pair))]
    MissingEquals { pair: String },
    #[error("CNI_ARGS entry {} has an empty key", Quoted(.pair))]
    EmptyKey { pair: String },
    #[error("CNI_ARGS sets {key} more than once")]
    Duplicate { key: &'static str },
    #[error(
        "CNI_ARGS has unknown key {}; add IgnoreUnknown=1 to CNI_ARGS to pass keys ambit-cni does not use",
        Quoted(.key)
    )]
    UnknownKey { key: String },
    #[error("CNI_ARGS IgnoreUnknown={} is not a boolean; expected 1, 0, true or false", Quoted(.value))]
    InvalidIgnoreUnknown { value: String },
    #[error("CNI_ARGS has no {key}; ambit-cni serves Kubernetes pods and needs K8S_POD_NAMESPACE and K8S_POD_NAME")]
    MissingPodField { key: &'static str },
    #[error("CNI_ARGS {key}={} is not a valid Kubernetes {kind}: {reason}", Quoted(.value))]
    InvalidPodField {
        key: &'static str,
        value: String,
        kind: &'static str,
        reason: &'static str,
    },
}

/// `CNI_ARGS` as the runtime passed it, keys known, values not yet checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

impl CniArgs {
    /// Parses `KEY=VALUE;KEY=VALUE`. Empty entries (`a=b;;c=d`, a trailing `;`) are skipped; a
    /// value may contain `=`; empty values count as absent.
    pub fn parse(raw: &str) -> Result<Self, ArgsError> {
        let mut pairs = Vec::new();
        for pair in raw.split(';').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ArgsError::MissingEquals { pair: pair.to_owned() })?;
            if key.is_empty() {
                return Err(ArgsError::EmptyKey { pair: pair.to_owned() });
            }
            pairs.push((key, value));
        }

        let mut ignore_unknown = None;
        let mut args = Self::default();
        let mut unknown = None;
        for (key, value) in pairs {
            let (name, slot) = match key {
                IGNORE_UNKNOWN => {
                    if ignore_unknown.replace(parse_bool(value)?).is_some() {
                        return Err(ArgsError::Duplicate { key: IGNORE_UNKNOWN });
                    }
                    continue;
                }
                POD_NAMESPACE => (POD_NAMESPACE, &mut args.pod_namespace),
                POD_NAME => (POD_NAME, &mut args.pod_name),
                POD_UID => (POD_UID, &mut args.pod_uid),
                POD_INFRA_CONTAINER_ID => continue,
                other => {
                    unknown.get_or_insert(other);
                    continue;
                }
            };
            if slot.is_some() {
                return Err(ArgsError::Duplicate { key: name });
            }
            *slot = Some(value.to_owned());
        }
        // `IgnoreUnknown` may come after the unknown keys it excuses.
        if let Some(key) = unknown
            && ignore_unknown != Some(true)
        {
            return Err(ArgsError::UnknownKey { key: key.to_owned() });
        }
        for slot in [&mut args.pod_namespace, &mut args.pod_name, &mut args.pod_uid] {
            if slot.as_deref() == Some("") {
                *slot = None;
            }
        }
        Ok(args)
    }
}

/// libcni's boolean for `IgnoreUnknown`.
fn parse_bool(value: &str) -> Result<bool, ArgsError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ArgsError::InvalidIgnoreUnknown {
            value: value.to_owned(),
        }),
    }
}

/// The Kubernetes pod a container belongs to, with names that Kubernetes would accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl PodIdentity {
    /// The pod named in `CNI_ARGS`; namespace and name are required.
    pub fn from_args(args: &CniArgs) -> Result<Self, ArgsError> {
        let namespace = args
            .pod_namespace
            .as_deref()
            .ok_or(ArgsError::MissingPodField { key: POD_NAMESPACE })?;
        let name = args
            .pod_name
            .as_deref()
            .ok_or(ArgsError::MissingPodField { key: POD_NAME })?;
        let invalid = |key, value: &str, kind, reason| ArgsError::InvalidPodField {
            key,
            value: value.to_owned(),
            kind,
            reason,
        };
        dns1123_label(namespace).map_err(|reason| invalid(POD_NAMESPACE, namespace, "namespace name", reason))?;
        dns1123_subdomain(name).map_err(|reason| invalid(POD_NAME, name, "pod name", reason))?;
        if let Some(uid) = args.pod_uid.as_deref() {
            pod_uid(uid).map_err(|reason| invalid(POD_UID, uid, "pod UID", reason))?;
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: args.pod_uid.clone(),
        })
    }
}

/// RFC 1123 label as Kubernetes checks it (namespaces): at most 63 characters of lowercase
/// letters, digits and `-`, starting and ending with a letter or digit.
fn dns1123_label(value: &str) -> Result<(), &'static str> {
    if value.len() > 63 {
        return Err("longer than 63 characters");
    }
    label_characters(value, "only lowercase letters, digits and `-` are allowed")
}

/// RFC 1123 subdomain as Kubernetes checks it (pod names): at most 253 characters, labels of
/// lowercase letters, digits and `-` joined by `.`, each starting and ending with a letter or digit.
fn dns1123_subdomain(value: &str) -> Result<(), &'static str> {
    if value.len() > 253 {
        return Err("longer than 253 characters");
    }
    value
        .split('.')
        .try_for_each(|label| label_characters(label, "only lowercase letters, digits, `-` and `.` are allowed"))
}

fn label_characters(label: &str, allowed: &'static str) -> Result<(), &'static str> {
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    let bytes = label.as_bytes();
    if !bytes.iter().all(|byte| alphanumeric(byte) || *byte == b'-') {
        return Err(allowed);
    }
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) if alphanumeric(first) && alphanumeric(last) => Ok(()),
        (None, _) | (_, None) => Err("empty, or an empty part between dots"),
        _ => Err("must start and end with a lowercase letter or digit"),
    }
}

/// Kubernetes UIDs are UUIDs (static pods: a hex hash); anything else is not from a kubelet.
fn pod_uid(value: &str) -> Result<(), &'static str> {
    if value.len() > 128 {
        return Err("longer than 128 characters");
    }
    if value.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-') {
        Ok(())
    } else {
        Err("only letters, digits and `-` are allowed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(raw: &str) -> Result<PodIdentity, ArgsError> {
        PodIdentity::from_args(&CniArgs::parse(raw)?)
    }

    #[test]
    fn parses_the_kubernetes_pod_identity() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b1c2d3e-aaaa-bbbb-cccc-0123456789ab",
        )
        .expect("valid CNI_ARGS");
        assert_eq!(
            PodIdentity::from_args(&args),
            Ok(PodIdentity {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: Some("0b1c2d3e-aaaa-bbbb-cccc-0123456789ab".into()),
            })
        );
    }

    #[test]
    fn empty_args_and_empty_entries_are_fine() {
        assert_eq!(CniArgs::parse(""), Ok(CniArgs::default()));
        let args = CniArgs::parse(";K8S_POD_NAMESPACE=a;;K8S_POD_NAME=b;").expect("empty entries are skipped");
        assert_eq!(args.pod_namespace.as_deref(), Some("a"));
        assert_eq!(args.pod_name.as_deref(), Some("b"));
        assert_eq!(CniArgs::parse("K8S_POD_UID=").map(|args| args.pod_uid), Ok(None));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert_eq!(
            CniArgs::parse("FOO=bar"),
            Err(ArgsError::UnknownKey { key: "FOO".into() })
        );
        assert_eq!(
            CniArgs::parse("FOO=bar;IgnoreUnknown=0"),
            Err(ArgsError::UnknownKey { key: "FOO".into() })
        );
        for ignore in ["1", "true", "TRUE", "True"] {
            let raw = format!("FOO=bar;IgnoreUnknown={ignore};FOO=again");
            assert_eq!(CniArgs::parse(&raw), Ok(CniArgs::default()), "{raw}");
        }
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=yes"),
            Err(ArgsError::InvalidIgnoreUnknown { value: "yes".into() })
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a;garbage"),
            Err(ArgsError::MissingEquals { pair: "garbage".into() })
        );
        assert_eq!(CniArgs::parse("=x"), Err(ArgsError::EmptyKey { pair: "=x".into() }));
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a;K8S_POD_NAME=b"),
            Err(ArgsError::Duplicate { key: POD_NAME })
        );
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=1;IgnoreUnknown=1"),
            Err(ArgsError::Duplicate { key: IGNORE_UNKNOWN })
        );
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a=b").map(|args| args.pod_name),
            Ok(Some("a=b".into()))
        );
    }

    #[test]
    fn namespace_and_name_are_required() {
        assert_eq!(
            pod("K8S_POD_NAME=web"),
            Err(ArgsError::MissingPodField { key: POD_NAMESPACE })
        );
        assert_eq!(
            pod("K8S_POD_NAMESPACE=default"),
            Err(ArgsError::MissingPodField { key: POD_NAME })
        );
        assert_eq!(
            pod("K8S_POD_NAMESPACE=;K8S_POD_NAME=web"),
            Err(ArgsError::MissingPodField { key: POD_NAMESPACE })
        );
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(pod("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde").is_ok());
        assert!(
            pod("K8S_POD_NAMESPACE=a;K8S_POD_NAME=web.v1.example").is_ok(),
            "pod names are subdomains"
        );
        for (raw, key) in [
            ("K8S_POD_NAMESPACE=Default;K8S_POD_NAME=web", POD_NAMESPACE),
            ("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web", POD_NAMESPACE),
            ("K8S_POD_NAMESPACE=-a;K8S_POD_NAME=web", POD_NAMESPACE),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-", POD_NAME),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=web..x", POD_NAME),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=we b", POD_NAME),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=web\n", POD_NAME),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=wéb", POD_NAME),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=web;K8S_POD_UID=a/b", POD_UID),
        ] {
            match pod(raw) {
                Err(ArgsError::InvalidPodField { key: found, .. }) => assert_eq!(found, key, "{raw:?}"),
                other => panic!("{raw:?} gave {other:?}"),
            }
        }
        let too_long = format!("K8S_POD_NAMESPACE={};K8S_POD_NAME=web", "a".repeat(64));
        assert!(pod(&too_long).is_err());
        let long_name = format!("K8S_POD_NAMESPACE=a;K8S_POD_NAME={}", "a".repeat(253));
        assert!(pod(&long_name).is_ok());
    }

    #[test]
    fn bad_values_are_escaped_in_messages() {
        let error = pod("K8S_POD_NAMESPACE=a;K8S_POD_NAME=evil\"\n{}").expect_err("invalid name");
        let message = error.to_string();
        assert!(message.contains(r#""evil\"\n{}""#), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

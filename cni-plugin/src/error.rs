//! Every way an invocation can fail, and the one place that turns a failure into a CNI error code
//! and the spec's error JSON (`{"cniVersion", "code", "msg", "details"}`, printed on stdout with a
//! non-zero exit). Values that came from the runtime are shown quoted and escaped.

use std::{fmt, io, path::PathBuf};

use serde::Serialize;

use crate::{agent::AgentError, args::ArgsError, netconf::SUPPORTED_VERSIONS};

/// The CNI spec's well-known error codes (spec 1.1, "Error"); 0–99 are reserved for the spec.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables, like `CNI_COMMAND` or `CNI_CONTAINERID`.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content, e.g. the network config is not JSON.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition, here the node agent not answering.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS only: the plugin is not available, the runtime should not send ADDs.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// The network config asks for a spec version we do not speak.
    #[error("unsupported cniVersion {}; ambit-cni supports {}", Quoted(.requested), SUPPORTED_VERSIONS.join(", "))]
    UnsupportedVersion { requested: String },
    /// STATUS and GC exist from spec 1.1.0 on.
    #[error("{command} needs cniVersion 1.1.0 or later; the network config says {version}")]
    CommandNeedsNewerVersion {
        command: &'static str,
        version: &'static str,
    },
    /// A required `CNI_*` variable is unset or empty.
    #[error("{name} is not set; the runtime must set it for {command}")]
    MissingEnv { name: &'static str, command: &'static str },
    /// A `CNI_*` variable has a value we cannot use.
    #[error("{name}={} is invalid: {reason}", Quoted(.value))]
    InvalidEnv {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// `CNI_COMMAND` names no command we know.
    #[error("CNI_COMMAND={} is not a CNI command; expected ADD, DEL, CHECK, VERSION, STATUS or GC", Quoted(.value))]
    UnknownCommand { value: String },
    /// `CNI_ARGS` is malformed or lacks the pod's identity.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Reading the network config from stdin failed.
    #[error("reading the network config from stdin failed")]
    ReadStdin(#[source] io::Error),
    /// The network config on stdin is larger than we are willing to read.
    #[error("the network config on stdin is larger than {limit} bytes")]
    StdinTooLarge { limit: usize },
    /// Stdin is not JSON.
    #[error("the network config on stdin is not valid JSON: {reason} at line {line} column {column}")]
    MalformedConfig { reason: String, line: usize, column: usize },
    /// Stdin is JSON but a field is missing or has the wrong type or value.
    #[error("{}: {reason}", ConfigSubject(.field.as_deref()))]
    InvalidConfig { field: Option<String>, reason: String },
    /// ADD and CHECK run after the plugin that made the pod's interface; without its result there
    /// is nothing to pass through and no pod IPs.
    #[error(
        "the network config has no `prevResult`; ambit-cni is a chained plugin and must be listed \
         after the plugin that creates the pod's interface"
    )]
    MissingPrevResult,
    /// No usable answer from the node agent.
    #[error("no answer from the node agent at {} for {command}", .socket.display())]
    Agent {
        socket: PathBuf,
        command: &'static str,
        #[source]
        source: AgentError,
    },
    /// The node agent answered with an error; its code and message are passed on as they are.
    #[error("{msg}")]
    AgentRefused { code: u32, msg: String, details: String },
    /// STATUS: the node agent's socket does not accept connections.
    #[error("the node agent at {} does not accept connections", .socket.display())]
    AgentNotReady {
        socket: PathBuf,
        #[source]
        source: AgentError,
    },
    /// Rendering our own output failed; cannot happen with the JSON values we build.
    #[error("encoding the result as JSON failed")]
    EncodeOutput(#[source] serde_json::Error),
}

impl CniError {
    /// The CNI error code the runtime sees: the one mapping from failures to codes.
    pub fn code(&self) -> u32 {
        match self {
            Self::UnsupportedVersion { .. } | Self::CommandNeedsNewerVersion { .. } => code::INCOMPATIBLE_VERSION,
            Self::MissingEnv { .. } | Self::InvalidEnv { .. } | Self::UnknownCommand { .. } | Self::Args(_) => {
                code::INVALID_ENVIRONMENT
            }
            Self::ReadStdin(_) | Self::EncodeOutput(_) => code::IO_FAILURE,
            Self::StdinTooLarge { .. } | Self::MalformedConfig { .. } => code::DECODE_FAILURE,
            Self::InvalidConfig { .. } | Self::MissingPrevResult => code::INVALID_CONFIG,
            // Fail closed: an unreachable agent must fail the ADD (the pod may be enrolled), and
            // the runtime retries the sandbox. A reply we cannot read is a version skew or a bug.
            Self::Agent { source, .. } if source.is_unreachable() => code::TRY_AGAIN_LATER,
            Self::Agent { .. } => code::DECODE_FAILURE,
            Self::AgentRefused { code, .. } => *code,
            Self::AgentNotReady { .. } => code::PLUGIN_NOT_AVAILABLE,
        }
    }

    /// The spec's `details`: what to check, or the agent's own details.
    fn details(&self) -> String {
        match self {
            Self::AgentRefused { details, .. } => details.clone(),
            Self::Agent { source, .. } if source.is_unreachable() => {
                "check that ambit-cni-agent runs on this node and that `agentSocket` in the CNI config names its socket"
                    .to_owned()
            }
            Self::AgentNotReady { .. } => {
                "ambit-cni-agent is not running on this node, or `agentSocket` in the CNI config names the wrong path"
                    .to_owned()
            }
            Self::UnsupportedVersion { .. } | Self::CommandNeedsNewerVersion { .. } => {
                "set `cniVersion` in the CNI config list to 1.0.0 or 1.1.0".to_owned()
            }
            _ => String::new(),
        }
    }

    /// The spec's `msg`: this error and its sources, each naming what it was about.
    fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            message.push_str(": ");
            message.push_str(&error.to_string());
            source = error.source();
        }
        message
    }

    /// The error as the spec's JSON object, `cni_version` being the version of the config.
    pub fn to_json(&self, cni_version: &str) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorJson<'a> {
            cni_version: &'a str,
            code: u32,
            msg: String,
            #[serde(skip_serializing_if = "String::is_empty")]
            details: String,
        }
        let error = ErrorJson {
            cni_version,
            code: self.code(),
            msg: self.message(),
            details: self.details(),
        };
        let mut json = serde_json::to_vec(&error).unwrap_or_else(|_| {
            // Unreachable (strings and a number always encode); keep the code at least.
            format!(r#"{{"cniVersion":"1.1.0","code":{}}}"#, self.code()).into_bytes()
        });
        json.push(b'\n');
        json
    }

    /// The complete message, for logs.
    pub fn log_message(&self) -> String {
        let details = self.details();
        if details.is_empty() {
            self.message()
        } else {
            format!("{} ({details})", self.message())
        }
    }
}

/// "network config field `timeout` is invalid", or the config as a whole.
struct ConfigSubject<'a>(Option<&'a str>);

impl fmt::Display for ConfigSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, "network config field `{field}` is invalid"),
            None => f.write_str("the network config is invalid"),
        }
    }
}

/// Shows a value from the runtime in double quotes, escaping control characters and quotes so
/// it cannot forge log lines or JSON, and cutting it short past 128 characters.
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 128;
        match self.0.char_indices().nth(MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes in all)", &self.0[..cut], self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(error: &CniError, version: &str) -> serde_json::Value {
        serde_json::from_slice(&error.to_json(version)).expect("error JSON parses")
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let error = CniError::MissingEnv {
            name: "CNI_NETNS",
            command: "ADD",
        };
        assert_eq!(
            json(&error, "1.0.0"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 4,
                "msg": "CNI_NETNS is not set; the runtime must set it for ADD",
            })
        );
        assert!(error.to_json("1.0.0").ends_with(b"\n"));
    }

    #[test]
    fn agent_refusal_passes_code_message_and_details_through() {
        let error = CniError::AgentRefused {
            code: 11,
            msg: "ztunnel not connected".into(),
            details: "retry".into(),
        };
        assert_eq!(
            json(&error, "1.1.0"),
            serde_json::json!({"cniVersion": "1.1.0", "code": 11, "msg": "ztunnel not connected", "details": "retry"})
        );
    }

    #[test]
    fn message_includes_the_source_chain() {
        let error = CniError::Agent {
            socket: "/run/agent.sock".into(),
            command: "ADD",
            source: AgentError::Connect(io::Error::from(io::ErrorKind::NotFound)),
        };
        let value = json(&error, "1.1.0");
        assert_eq!(value["code"], 11);
        let msg = value["msg"].as_str().expect("msg is a string");
        assert!(
            msg.starts_with("no answer from the node agent at /run/agent.sock for ADD: "),
            "{msg}"
        );
        assert!(msg.contains("not found"), "{msg}");
        assert!(
            value["details"]
                .as_str()
                .is_some_and(|details| details.contains("agentSocket"))
        );
    }

    #[test]
    fn quoted_escapes_and_truncates() {
        assert_eq!(Quoted("a\"b\nc").to_string(), r#""a\"b\nc""#);
        let long = "x".repeat(300);
        let shown = Quoted(&long).to_string();
        assert!(shown.starts_with(&format!("\"{}\"", "x".repeat(128))), "{shown}");
        assert!(shown.ends_with("(300 bytes in all)"), "{shown}");
    }
}

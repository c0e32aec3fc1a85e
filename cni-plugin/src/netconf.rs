//! The network config on stdin (spec "Section 1", plugin configuration object): the spec's
//! fields, our own (`agentSocket`, `timeout`, `logFile`) and the `prevResult` we pass through.
//! Unknown fields (`runtimeConfig`, `capabilities`, `args`, ...) are tolerated.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    error::{CniError, Quoted},
    protocol::DEFAULT_AGENT_SOCKET,
};

/// The spec versions we speak, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// How long the plugin waits for the node agent unless `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeout` we accept: the runtime gives up on the sandbox long before.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A spec version we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const LATEST: Self = Self::V1_1_0;

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1.0.0" => Some(Self::V1_0_0),
            "1.1.0" => Some(Self::V1_1_0),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

/// The network config, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The network's name (`name`).
    pub name: String,
    /// The plugin type (`type`), i.e. our binary's name as the runtime knows it.
    pub plugin_type: String,
    /// The result of the plugins before us in the chain.
    pub prev_result: Option<PrevResult>,
    /// The node agent's unix socket (`agentSocket`, absolute).
    pub agent_socket: PathBuf,
    /// The whole exchange with the agent (connect, send, reply) must fit in this (`timeout`).
    pub timeout: Duration,
    /// Where logs go (`logFile`, absolute); stderr when unset. Never stdout.
    pub log_file: Option<PathBuf>,
    /// GC: the attachments the runtime still holds (`cni.dev/valid-attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The fields as they come, before our checks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    agent_socket: Option<String>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    log_file: Option<String>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// Stdin as JSON, with serde's line and column when it is not.
pub fn parse_json(stdin: &[u8]) -> Result<Value, CniError> {
    serde_json::from_slice(stdin).map_err(|error| CniError::MalformedConfig {
        reason: reason_without_position(&error),
        line: error.line(),
        column: error.column(),
    })
}

/// The `cniVersion` a config declares, supported or not: the version to answer errors in.
pub fn declared_version(config: &Value) -> Option<&str> {
    config.get("cniVersion")?.as_str()
}

impl NetConf {
    /// Checks a config parsed by [`parse_json`].
    pub fn from_value(config: Value) -> Result<Self, CniError> {
        let raw: RawNetConf = serde_path_to_error::deserialize(config).map_err(|error| {
            let path = error.path().to_string();
            CniError::InvalidConfig {
                field: (path != ".").then_some(path),
                reason: reason_without_position(error.inner()),
            }
        })?;
        let cni_version = CniVersion::parse(&raw.cni_version).ok_or_else(|| CniError::UnsupportedVersion {
            requested: raw.cni_version.clone(),
        })?;
        let prev_result = match raw.prev_result {
            None | Some(Value::Null) => None,
            Some(Value::Object(result)) => Some(PrevResult(result)),
            Some(_) => return Err(invalid("prevResult", "must be a JSON object (a CNI result)".to_owned())),
        };
        let agent_socket = match raw.agent_socket {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(socket) => socket_path(socket)?,
        };
        let timeout = match raw.timeout {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(value) => timeout(&value)?,
        };
        let log_file = raw.log_file.map(|path| absolute("logFile", path)).transpose()?;
        Ok(Self {
            cni_version,
            name: raw.name,
            plugin_type: raw.plugin_type,
            prev_result,
            agent_socket,
            timeout,
            log_file,
            valid_attachments: raw.valid_attachments,
        })
    }
}

fn invalid(field: &str, reason: String) -> CniError {
    CniError::InvalidConfig {
        field: Some(field.to_owned()),
        reason,
    }
}

fn absolute(field: &str, path: String) -> Result<PathBuf, CniError> {
    if Path::new(&path).is_absolute() {
        Ok(PathBuf::from(path))
    } else {
        Err(invalid(field, format!("{} is not an absolute path", Quoted(&path))))
    }
}

fn socket_path(path: String) -> Result<PathBuf, CniError> {
    if path.len() > MAX_SOCKET_PATH {
        return Err(invalid(
            "agentSocket",
            format!(
                "{} is longer than the {MAX_SOCKET_PATH} bytes a unix socket path can have",
                Quoted(&path)
            ),
        ));
    }
    absolute("agentSocket", path)
}

/// `timeout`: seconds as a JSON number (`30`, `2.5`) or a duration string (`"30s"`, `"1m 30s"`,
/// `"500ms"`); more than zero and at most an hour.
fn timeout(value: &Value) -> Result<Duration, CniError> {
    let parsed = match value {
        Value::Number(number) => number
            .as_f64()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| format!("{number} is not a number of seconds")),
        Value::String(text) => humantime::parse_duration(text)
            .map_err(|error| format!("{} is not a duration like \"30s\" or \"1m 30s\": {error}", Quoted(text))),
        other => Err(format!(
            "expected seconds (30) or a duration string (\"30s\"), got {other}"
        )),
    };
    match parsed {
        Ok(duration) if duration.is_zero() => Err(invalid("timeout", "must be more than zero".to_owned())),
        Ok(duration) if duration > MAX_TIMEOUT => Err(invalid(
            "timeout",
            format!("{duration:?} is more than the maximum of {MAX_TIMEOUT:?}"),
        )),
        Ok(duration) => Ok(duration),
        Err(reason) => Err(invalid("timeout", reason)),
    }
}

/// serde_json appends " at line L column C"; we report the position in fields of our own.
fn reason_without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) if error.line() > 0 => message[..at].to_owned(),
        _ => message,
    }
}

/// The result of the plugins before us, kept as the JSON object received so that it passes
/// through unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct PrevResult(Map<String, Value>);

impl PrevResult {
    /// The pod's addresses: `ips[].address` (CIDR) without the prefix length, in order. A result
    /// without `ips` has none.
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let entries = match self.0.get("ips") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(invalid("prevResult.ips", "must be an array".to_owned())),
        };
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let field = format!("prevResult.ips[{index}].address");
                let address = entry
                    .get("address")
                    .ok_or_else(|| invalid(&field, "missing".to_owned()))?
                    .as_str()
                    .ok_or_else(|| invalid(&field, "must be a string".to_owned()))?;
                cidr_address(address).ok_or_else(|| {
                    invalid(
                        &field,
                        format!(
                            "{} is not an address with prefix length like 10.0.0.5/24",
                            Quoted(address)
                        ),
                    )
                })
            })
            .collect()
    }

    /// ADD's output: the result unchanged but for `cniVersion`, which the spec requires to be
    /// the config's.
    pub fn passthrough(&self, version: CniVersion) -> Result<Vec<u8>, CniError> {
        let mut result = self.0.clone();
        result.insert("cniVersion".to_owned(), Value::String(version.as_str().to_owned()));
        let mut output = serde_json::to_vec(&result).map_err(CniError::EncodeOutput)?;
        output.push(b'\n');
        Ok(output)
    }
}

/// `10.0.0.5/24` or `fd00::5/64` → the address.
fn cidr_address(cidr: &str) -> Option<IpAddr> {
    let (address, prefix) = cidr.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    // `u8::from_str` would also take `+24`.
    if !prefix.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max_prefix = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max_prefix).then_some(address)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::code;

    fn conf(value: Value) -> Result<NetConf, CniError> {
        NetConf::from_value(value)
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambit-cni"})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut config = minimal();
        config[field] = value;
        config
    }

    #[test]
    fn defaults() {
        let conf = conf(minimal()).expect("minimal config");
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.name, "k8s-pod-network");
        assert_eq!(conf.plugin_type, "ambit-cni");
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.agent_socket, Path::new(DEFAULT_AGENT_SOCKET));
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
        assert_eq!(conf.log_file, None);
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn our_fields_and_unknown_fields() {
        let config = json!({
            "cniVersion": "1.1.0",
            "name": "net",
            "type": "ambit-cni",
            "agentSocket": "/run/ambit/agent.sock",
            "timeout": "1m 30s",
            "logFile": "/var/log/ambit-cni.log",
            "runtimeConfig": {"portMappings": []},
            "capabilities": {"portMappings": true},
            "args": {"cni": {}},
            "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
            "prevResult": null,
        });
        let conf = conf(config).expect("full config");
        assert_eq!(conf.cni_version, CniVersion::V1_1_0);
        assert_eq!(conf.agent_socket, Path::new("/run/ambit/agent.sock"));
        assert_eq!(conf.timeout, Duration::from_secs(90));
        assert_eq!(conf.log_file.as_deref(), Some(Path::new("/var/log/ambit-cni.log")));
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn timeouts() {
        for (value, expected) in [
            (json!(5), Duration::from_secs(5)),
            (json!(2.5), Duration::from_millis(2500)),
            (json!("500ms"), Duration::from_millis(500)),
            (json!("30s"), Duration::from_secs(30)),
        ] {
            assert_eq!(
                conf(with("timeout", value.clone())).map(|conf| conf.timeout).ok(),
                Some(expected),
                "{value}"
            );
        }
        for value in [
            json!(0),
            json!(-1),
            json!(1e300),
            json!("30"),
            json!("soon"),
            json!(true),
            json!(7200),
        ] {
            let error = conf(with("timeout", value.clone())).expect_err("bad timeout");
            assert_eq!(error.code(), code::INVALID_CONFIG, "{value}");
            assert!(
                error
                    .to_string()
                    .starts_with("network config field `timeout` is invalid: "),
                "{error}"
            );
        }
    }

    #[test]
    fn paths_must_be_absolute_and_fit() {
        let error = conf(with("agentSocket", json!("agent.sock"))).expect_err("relative");
        assert_eq!(
            error.to_string(),
            "network config field `agentSocket` is invalid: \"agent.sock\" is not an absolute path"
        );
        let long = format!("/{}", "s".repeat(120));
        assert!(conf(with("agentSocket", json!(long))).is_err());
        assert!(conf(with("logFile", json!("log.txt"))).is_err());
    }

    #[test]
    fn versions() {
        for version in SUPPORTED_VERSIONS {
            let parsed = CniVersion::parse(version).expect("supported");
            assert_eq!(parsed.as_str(), version);
        }
        assert!(CniVersion::V1_0_0 < CniVersion::LATEST);
        for version in ["0.4.0", "1.0", "2.0.0", ""] {
            let error = conf(with("cniVersion", json!(version))).expect_err(version);
            assert_eq!(error.code(), code::INCOMPATIBLE_VERSION);
            assert_eq!(
                error.to_string(),
                format!("unsupported cniVersion {version:?}; ambit-cni supports 1.0.0, 1.1.0")
            );
        }
        assert_eq!(declared_version(&with("cniVersion", json!("0.3.1"))), Some("0.3.1"));
        assert_eq!(declared_version(&json!({"cniVersion": 1})), None);
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let error = conf(json!({"cniVersion": "1.0.0", "type": "ambit-cni"})).expect_err("no name");
        assert_eq!(error.code(), code::INVALID_CONFIG);
        assert_eq!(error.to_string(), "the network config is invalid: missing field `name`");
        let error = conf(with("logFile", json!(3))).expect_err("number");
        assert!(
            error
                .to_string()
                .starts_with("network config field `logFile` is invalid: invalid type"),
            "{error}"
        );
        let error = conf(with("cni.dev/valid-attachments", json!([{"ifname": "eth0"}]))).expect_err("no id");
        assert!(error.to_string().contains("`cni.dev/valid-attachments[0]`"), "{error}");
        assert!(conf(json!([1, 2])).is_err());
        let error = conf(with("prevResult", json!("x"))).expect_err("string result");
        assert_eq!(error.code(), code::INVALID_CONFIG);
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let error = parse_json(b"{\n  \"cniVersion\": \"1.0.0\",\n  oops\n}").expect_err("not JSON");
        assert_eq!(error.code(), code::DECODE_FAILURE);
        assert_eq!(
            error.to_string(),
            "the network config on stdin is not valid JSON: key must be a string at line 3 column 3"
        );
        let error = parse_json(b"").expect_err("empty");
        assert!(error.to_string().contains("EOF while parsing"), "{error}");
    }

    fn result(value: Value) -> PrevResult {
        match conf(with("prevResult", value)).map(|conf| conf.prev_result) {
            Ok(Some(result)) => result,
            other => panic!("not a prevResult: {other:?}"),
        }
    }

    #[test]
    fn pod_ips_come_from_prev_result() {
        let result = result(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0},
                {"address": "fd00:10:244:1::5/64", "interface": 0},
            ],
        }));
        let ips: Vec<IpAddr> = ["10.244.1.5", "fd00:10:244:1::5"]
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        assert_eq!(result.pod_ips().ok(), Some(ips));
        assert_eq!(
            self::result(json!({"cniVersion": "1.0.0"})).pod_ips().ok(),
            Some(vec![])
        );
    }

    #[test]
    fn bad_ip_entries_are_named() {
        for (entry, reason) in [
            (
                json!({"address": "10.0.0.5"}),
                "\"10.0.0.5\" is not an address with prefix length",
            ),
            (json!({"address": "10.0.0.5/33"}), "\"10.0.0.5/33\" is not"),
            (json!({"address": "10.0.0.5/+8"}), "\"10.0.0.5/+8\" is not"),
            (json!({"address": "fd00::5/129"}), "\"fd00::5/129\" is not"),
            (json!({"address": "host/24"}), "\"host/24\" is not"),
            (json!({"address": 5}), "must be a string"),
            (json!({"gateway": "10.0.0.1"}), "missing"),
        ] {
            let result = result(json!({"ips": [{"address": "10.0.0.4/24"}, entry]}));
            let error = result.pod_ips().expect_err("bad entry");
            assert_eq!(error.code(), code::INVALID_CONFIG);
            let message = error.to_string();
            assert!(
                message.starts_with("network config field `prevResult.ips[1].address` is invalid: "),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
        assert!(result(json!({"ips": {"address": "10.0.0.4/24"}})).pod_ips().is_err());
    }

    #[test]
    fn passthrough_keeps_the_result_and_sets_the_version() {
        let received = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/x", "mtu": 1450}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
            "x-vendor": {"nested": [1, 2.5, null, true]},
        });
        let output = result(received.clone())
            .passthrough(CniVersion::V1_1_0)
            .expect("encodes");
        assert!(output.ends_with(b"\n"));
        let mut expected = received;
        expected["cniVersion"] = json!("1.1.0");
        assert_eq!(serde_json::from_slice::<Value>(&output).ok(), Some(expected));
    }
}

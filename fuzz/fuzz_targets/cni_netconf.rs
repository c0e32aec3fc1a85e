//! The CNI plugin's inputs come from the runtime and whoever wrote the conflist: the network config
//! on stdin (with the previous plugin's result) and `CNI_ARGS`. Parsing must never panic; an
//! accepted config keeps its limits, `prevResult` passes through as it came but for
//! `cniVersion`, an accepted pod identity follows Kubernetes' naming rules, and every refusal
//! becomes the spec's error JSON with a one-line log message.
//!
//! Input: the stdin bytes, then optionally a NUL and `CNI_ARGS` (an environment variable holds no
//! NUL, and JSON text has no raw one either).
#![no_main]

use ambit_cni::{
    args::PodIdentity,
    environment::{CNI_ARGS, Environment},
    error::CniError,
    netconf::{self, CniVersion, MAX_TIMEOUT, NetConf, SUPPORTED_VERSIONS},
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let (stdin, args) = match input.iter().position(|&byte| byte == 0) {
        Some(at) => (&input[..at], Some(String::from_utf8_lossy(&input[at + 1..]))),
        None => (input, None),
    };
    network_config(stdin);
    cni_args(args.as_deref());
});

fn network_config(stdin: &[u8]) {
    let config = match netconf::parse_json(stdin) {
        Ok(config) => config,
        Err(error) => return refused(&error, CniVersion::LATEST.as_str()),
    };
    // What the plugin answers errors in: the declared version, supported or not.
    let declared = netconf::declared_version(&config)
        .unwrap_or(CniVersion::LATEST.as_str())
        .to_owned();
    let received_prev_result = config.get("prevResult").cloned();
    let conf = match NetConf::from_value(config) {
        Ok(conf) => conf,
        Err(error) => return refused(&error, &declared),
    };
    assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    assert!(
        conf.agent_socket.is_absolute() && conf.agent_socket.as_os_str().len() <= 107,
        "{conf:?}"
    );
    assert!(!conf.timeout.is_zero() && conf.timeout <= MAX_TIMEOUT, "{conf:?}");
    assert!(conf.log_file.as_ref().is_none_or(|path| path.is_absolute()), "{conf:?}");

    let Some(prev_result) = &conf.prev_result else {
        return;
    };
    if let Err(error) = prev_result.pod_ips() {
        refused(&error, conf.cni_version.as_str());
    }
    let output = prev_result
        .passthrough(conf.cni_version)
        .unwrap_or_else(|error| panic!("passthrough of an accepted prevResult failed: {error}"));
    // The result as received, but for the version the spec requires to be the config's.
    let Some(Value::Object(mut expected)) = received_prev_result else {
        panic!("accepted a prevResult that is not an object: {received_prev_result:?}");
    };
    expected.insert("cniVersion".to_owned(), conf.cni_version.as_str().into());
    let mut expected = serde_json::to_vec(&expected).expect("a JSON value encodes");
    expected.push(b'\n');
    assert_eq!(output, expected, "prevResult did not pass through unchanged");
    assert!(
        serde_json::from_slice::<Value>(&output).is_ok_and(|value| value.is_object()),
        "ADD output is not a JSON object"
    );
}

fn cni_args(raw: Option<&str>) {
    let env = Environment::from_pairs(raw.map(|raw| (CNI_ARGS, raw)));
    let args = match env.cni_args() {
        Ok(args) => args,
        Err(error) => return refused(&error, CniVersion::LATEST.as_str()),
    };
    for value in [&args.pod_namespace, &args.pod_name, &args.pod_uid]
        .into_iter()
        .flatten()
    {
        assert!(!value.is_empty() && !value.contains(';'), "{args:?}");
    }
    match PodIdentity::from_args(&args) {
        Ok(pod) => {
            let kubernetes_name = |name: &str| {
                name.bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.')
            };
            assert!(
                pod.namespace.len() <= 63 && kubernetes_name(&pod.namespace) && !pod.namespace.contains('.'),
                "{pod:?}"
            );
            assert!(pod.name.len() <= 253 && kubernetes_name(&pod.name), "{pod:?}");
        }
        Err(error) => refused(&CniError::from(error), CniVersion::LATEST.as_str()),
    }
}

/// A refusal must become the spec's error JSON, and its log message a single line.
fn refused(error: &CniError, cni_version: &str) {
    let json: Value = serde_json::from_slice(&error.to_json(cni_version))
        .unwrap_or_else(|e| panic!("error JSON for {error:?} does not parse: {e}"));
    assert_eq!(json["cniVersion"].as_str(), Some(cni_version), "{json}");
    assert!(json["code"].as_u64().is_some_and(|code| code > 0), "{json}");
    assert!(json["msg"].as_str().is_some_and(|msg| !msg.is_empty()), "{json}");
    let message = error.log_message();
    assert!(!message.contains(['\n', '\r']), "log message spans lines: {message:?}");
}

//! The commands against a scripted [`Agent`]; the real socket is covered in `agent.rs` and by the
//! binary tests in `tests/`.

use std::{
    cell::RefCell,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use super::*;
use crate::{agent::AgentError, environment::*, error::code, protocol::DEFAULT_AGENT_SOCKET};

/// What the fake agent does when called.
enum Script {
    Reply(PodReply),
    Unreachable,
    Garbled,
}

struct FakeAgent {
    script: Script,
    calls: RefCell<Vec<(PathBuf, Duration, PodRequest)>>,
    probes: RefCell<usize>,
}

impl FakeAgent {
    fn new(script: Script) -> Self {
        Self {
            script,
            calls: RefCell::default(),
            probes: RefCell::default(),
        }
    }

    fn enrolling() -> Self {
        Self::new(Script::Reply(PodReply::Ok { enrolled: true }))
    }

    fn requests(&self) -> Vec<PodRequest> {
        self.calls
            .borrow()
            .iter()
            .map(|(_, _, request)| request.clone())
            .collect()
    }
}

impl Agent for FakeAgent {
    fn call(&self, socket: &Path, timeout: Duration, request: &PodRequest) -> Result<PodReply, AgentError> {
        self.calls
            .borrow_mut()
            .push((socket.to_owned(), timeout, request.clone()));
        match &self.script {
            Script::Reply(reply) => Ok(reply.clone()),
            Script::Unreachable => Err(AgentError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused))),
            Script::Garbled => Err(AgentError::MalformedReply(serde_json::Error::io(
                io::ErrorKind::InvalidData.into(),
            ))),
        }
    }

    fn probe(&self, _socket: &Path, _timeout: Duration) -> Result<(), AgentError> {
        *self.probes.borrow_mut() += 1;
        match self.script {
            Script::Unreachable => Err(AgentError::Connect(io::Error::from(io::ErrorKind::NotFound))),
            _ => Ok(()),
        }
    }
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.244.0.7/24", "gateway": "10.244.0.1", "interface": 0}],
        "dns": {},
    })
}

fn config(version: &str) -> Value {
    json!({"cniVersion": version, "name": "k8s", "type": "ambit-cni", "prevResult": prev_result()})
}

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f;K8S_POD_UID=1234-abcd";

fn pod_env<'a>(extra: &[(&'a str, &'a str)]) -> Environment {
    let mut pairs = vec![
        (CNI_CONTAINERID, "c0ffee"),
        (CNI_NETNS, "/var/run/netns/cni-1"),
        (CNI_IFNAME, "eth0"),
        (CNI_ARGS, POD_ARGS),
        (CNI_PATH, "/opt/cni/bin"),
    ];
    for (name, value) in extra {
        pairs.retain(|(known, _)| known != name);
        pairs.push((name, value));
    }
    Environment::from_pairs(pairs)
}

fn invoke(command: fn(&Invocation<'_>) -> Reply, env: &Environment, stdin: &Value, agent: &FakeAgent) -> Reply {
    let stdin = stdin.to_string().into_bytes();
    command(&Invocation {
        env,
        stdin: &stdin,
        agent,
    })
}

/// The error JSON of a failed reply.
fn error_of(reply: &Reply) -> Value {
    assert_eq!(
        reply.exit_code,
        1,
        "expected a failure: {}",
        String::from_utf8_lossy(&reply.stdout)
    );
    serde_json::from_slice(&reply.stdout).expect("error JSON")
}

fn assert_success_without_output(reply: &Reply) {
    assert_eq!(reply.exit_code, 0, "{}", String::from_utf8_lossy(&reply.stdout));
    assert!(reply.stdout.is_empty(), "{}", String::from_utf8_lossy(&reply.stdout));
}

#[test]
fn add_sends_the_pod_and_passes_prev_result_through() {
    let agent = FakeAgent::enrolling();
    let mut stdin = config("1.1.0");
    stdin["timeout"] = json!(7);
    let reply = invoke(add, &pod_env(&[]), &stdin, &agent);
    assert_eq!(reply.exit_code, 0);
    let mut expected = prev_result();
    expected["cniVersion"] = json!("1.1.0");
    assert_eq!(serde_json::from_slice::<Value>(&reply.stdout).ok(), Some(expected));

    let calls = agent.calls.borrow();
    let (socket, timeout, request) = &calls[0];
    assert_eq!(socket, Path::new(DEFAULT_AGENT_SOCKET));
    assert_eq!(*timeout, Duration::from_secs(7));
    assert_eq!(
        *request,
        PodRequest {
            command: PodCommand::Add,
            container_id: "c0ffee".into(),
            netns: Some("/var/run/netns/cni-1".into()),
            interface: "eth0".into(),
            pod_namespace: "shop".into(),
            pod_name: "cart-7d9f".into(),
            pod_uid: Some("1234-abcd".into()),
            ips: vec!["10.244.0.7".parse().expect("ip")],
        }
    );
}

#[test]
fn add_passes_through_when_the_pod_is_not_enrolled() {
    let agent = FakeAgent::new(Script::Reply(PodReply::Ok { enrolled: false }));
    let reply = invoke(add, &pod_env(&[]), &config("1.0.0"), &agent);
    assert_eq!(reply.exit_code, 0);
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.stdout)
            .ok()
            .map(|result| result["cniVersion"].clone()),
        Some(json!("1.0.0"))
    );
}

#[test]
fn add_fails_closed() {
    let refused = FakeAgent::new(Script::Reply(PodReply::Error {
        code: 11,
        msg: "ztunnel has not acknowledged pod shop/cart-7d9f".into(),
        details: "is ztunnel running?".into(),
    }));
    let error = error_of(&invoke(add, &pod_env(&[]), &config("1.0.0"), &refused));
    assert_eq!(
        error,
        json!({
            "cniVersion": "1.0.0",
            "code": 11,
            "msg": "ztunnel has not acknowledged pod shop/cart-7d9f",
            "details": "is ztunnel running?",
        })
    );

    let error = error_of(&invoke(
        add,
        &pod_env(&[]),
        &config("1.0.0"),
        &FakeAgent::new(Script::Unreachable),
    ));
    assert_eq!(error["code"], code::TRY_AGAIN_LATER);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains(DEFAULT_AGENT_SOCKET)),
        "{error}"
    );

    let error = error_of(&invoke(
        add,
        &pod_env(&[]),
        &config("1.0.0"),
        &FakeAgent::new(Script::Garbled),
    ));
    assert_eq!(error["code"], code::DECODE_FAILURE);
}

#[test]
fn add_needs_prev_result_and_the_pod_environment() {
    let agent = FakeAgent::enrolling();
    let mut stdin = config("1.0.0");
    stdin.as_object_mut().map(|config| config.remove("prevResult"));
    let error = error_of(&invoke(add, &pod_env(&[]), &stdin, &agent));
    assert_eq!(error["code"], code::INVALID_CONFIG);
    assert!(
        error["msg"].as_str().is_some_and(|msg| msg.contains("prevResult")),
        "{error}"
    );

    for (name, value, mentions) in [
        (CNI_NETNS, "", "CNI_NETNS"),
        (CNI_CONTAINERID, "", "CNI_CONTAINERID"),
        (CNI_IFNAME, "", "CNI_IFNAME"),
        (CNI_ARGS, "K8S_POD_NAMESPACE=shop", "K8S_POD_NAME"),
        (CNI_ARGS, "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=Cart_1", "\"Cart_1\""),
        (CNI_ARGS, "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;FOO=1", "FOO"),
    ] {
        let error = error_of(&invoke(add, &pod_env(&[(name, value)]), &config("1.0.0"), &agent));
        assert_eq!(error["code"], code::INVALID_ENVIRONMENT, "{name}={value}: {error}");
        assert!(
            error["msg"].as_str().is_some_and(|msg| msg.contains(mentions)),
            "{error}"
        );
    }

    let mut stdin = config("1.0.0");
    stdin["prevResult"]["ips"][0]["address"] = json!("10.244.0.7");
    let error = error_of(&invoke(add, &pod_env(&[]), &stdin, &agent));
    assert_eq!(error["code"], code::INVALID_CONFIG);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("prevResult.ips[0].address")),
        "{error}"
    );
    assert!(agent.requests().is_empty(), "nothing reaches the agent");
}

#[test]
fn config_errors_answer_in_the_declared_version() {
    let agent = FakeAgent::enrolling();
    let error = error_of(&invoke(add, &pod_env(&[]), &config("0.4.0"), &agent));
    assert_eq!(error["code"], code::INCOMPATIBLE_VERSION);
    assert_eq!(error["cniVersion"], "0.4.0");
    assert_eq!(
        error["msg"],
        "unsupported cniVersion \"0.4.0\"; ambit-cni supports 1.0.0, 1.1.0"
    );

    let mut stdin = config("1.0.0");
    stdin["timeout"] = json!("forever");
    let error = error_of(&invoke(add, &pod_env(&[]), &stdin, &agent));
    assert_eq!(
        (error["code"].clone(), error["cniVersion"].clone()),
        (json!(7), json!("1.0.0"))
    );

    let env = pod_env(&[]);
    let reply = add(&Invocation {
        env: &env,
        stdin: b"{\"cniVersion\": \"1.0.0\",",
        agent: &agent,
    });
    let error = error_of(&reply);
    assert_eq!(
        (error["code"].clone(), error["cniVersion"].clone()),
        (json!(6), json!("1.1.0"))
    );
    assert!(
        error["msg"].as_str().is_some_and(|msg| msg.contains("line 1 column")),
        "{error}"
    );
}

#[test]
fn check_asks_the_agent() {
    let agent = FakeAgent::enrolling();
    assert_success_without_output(&invoke(check, &pod_env(&[]), &config("1.1.0"), &agent));
    assert_eq!(agent.requests()[0].command, PodCommand::Check);

    let refused = FakeAgent::new(Script::Reply(PodReply::Error {
        code: 100,
        msg: "rules missing".into(),
        details: String::new(),
    }));
    let error = error_of(&invoke(check, &pod_env(&[]), &config("1.1.0"), &refused));
    assert_eq!(
        error,
        json!({"cniVersion": "1.1.0", "code": 100, "msg": "rules missing"})
    );

    let mut stdin = config("1.1.0");
    stdin["prevResult"] = Value::Null;
    assert_eq!(
        error_of(&invoke(check, &pod_env(&[]), &stdin, &agent))["code"],
        code::INVALID_CONFIG
    );
}

#[test]
fn del_without_netns_or_prev_result() {
    let agent = FakeAgent::enrolling();
    let mut stdin = config("1.0.0");
    stdin.as_object_mut().map(|config| config.remove("prevResult"));
    for _ in 0..2 {
        assert_success_without_output(&invoke(del, &pod_env(&[(CNI_NETNS, "")]), &stdin, &agent));
    }
    let requests = agent.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].command, PodCommand::Del);
    assert_eq!(requests[0].netns, None);
    assert!(requests[0].ips.is_empty());
}

#[test]
fn del_is_lenient() {
    // Agent down: succeed, the agent reconciles.
    let down = FakeAgent::new(Script::Unreachable);
    assert_success_without_output(&invoke(del, &pod_env(&[]), &config("1.0.0"), &down));
    assert_eq!(down.requests().len(), 1);
    // Garbled reply: the same.
    let garbled = FakeAgent::new(Script::Garbled);
    assert_success_without_output(&invoke(del, &pod_env(&[]), &config("1.0.0"), &garbled));
    // No Kubernetes pod: ADD refused it, nothing to undo, the agent is not asked.
    let agent = FakeAgent::enrolling();
    assert_success_without_output(&invoke(del, &pod_env(&[(CNI_ARGS, "")]), &config("1.0.0"), &agent));
    // A broken prevResult is ignored.
    let mut stdin = config("1.0.0");
    stdin["prevResult"]["ips"] = json!("nope");
    assert_success_without_output(&invoke(del, &pod_env(&[]), &stdin, &agent));
    assert_eq!(agent.requests().len(), 1);
    assert!(agent.requests()[0].ips.is_empty());
}

#[test]
fn del_fails_when_the_agent_refuses_or_the_runtime_omits_the_container() {
    let refused = FakeAgent::new(Script::Reply(PodReply::Error {
        code: 11,
        msg: "busy".into(),
        details: String::new(),
    }));
    assert_eq!(
        error_of(&invoke(del, &pod_env(&[]), &config("1.0.0"), &refused))["code"],
        11
    );
    let agent = FakeAgent::enrolling();
    let error = error_of(&invoke(
        del,
        &pod_env(&[(CNI_CONTAINERID, "")]),
        &config("1.0.0"),
        &agent,
    ));
    assert_eq!(error["code"], code::INVALID_ENVIRONMENT);
}

#[test]
fn status_probes_the_agent() {
    let agent = FakeAgent::enrolling();
    assert_success_without_output(&invoke(status, &Environment::default(), &config("1.1.0"), &agent));
    assert_eq!(*agent.probes.borrow(), 1);

    let down = FakeAgent::new(Script::Unreachable);
    let error = error_of(&invoke(status, &Environment::default(), &config("1.1.0"), &down));
    assert_eq!(error["code"], code::PLUGIN_NOT_AVAILABLE);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains(DEFAULT_AGENT_SOCKET)),
        "{error}"
    );

    let error = error_of(&invoke(status, &Environment::default(), &config("1.0.0"), &agent));
    assert_eq!(error["code"], code::INCOMPATIBLE_VERSION);
    assert_eq!(
        error["msg"],
        "STATUS needs cniVersion 1.1.0 or later; the network config says 1.0.0"
    );
}

#[test]
fn gc_succeeds_without_the_agent() {
    let down = FakeAgent::new(Script::Unreachable);
    let mut stdin = config("1.1.0");
    stdin["cni.dev/valid-attachments"] = json!([{"containerID": "c0ffee", "ifname": "eth0"}]);
    assert_success_without_output(&invoke(gc, &Environment::default(), &stdin, &down));
    assert!(down.requests().is_empty());
    assert_eq!(
        error_of(&invoke(gc, &Environment::default(), &config("1.0.0"), &down))["code"],
        1
    );
}

#[test]
fn version_answers_in_the_requested_version() {
    let agent = FakeAgent::enrolling();
    let env = Environment::default();
    for (stdin, answered) in [
        (&b"{\"cniVersion\": \"1.0.0\"}"[..], "1.0.0"),
        (b"{\"cniVersion\": \"0.4.0\"}", "1.1.0"),
        (b"{}", "1.1.0"),
        (b"", "1.1.0"),
    ] {
        let reply = version(&Invocation {
            env: &env,
            stdin,
            agent: &agent,
        });
        assert_eq!(reply.exit_code, 0);
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.stdout).ok(),
            Some(json!({"cniVersion": answered, "supportedVersions": ["1.0.0", "1.1.0"]}))
        );
    }
    assert_eq!(
        error_of(&version(&Invocation {
            env: &env,
            stdin: b"{",
            agent: &agent
        }))["code"],
        6
    );
}

#[test]
fn stdin_is_bounded() {
    assert_eq!(read_stdin(&b"{}"[..]).ok(), Some(b"{}".to_vec()));
    let huge = vec![b' '; MAX_STDIN_BYTES + 1];
    assert!(matches!(read_stdin(&huge[..]), Err(CniError::StdinTooLarge { .. })));
}

#[test]
fn garbage_never_panics() {
    let agent = FakeAgent::enrolling();
    let env = pod_env(&[]);
    let inputs: [&[u8]; 9] = [
        b"",
        b"null",
        b"[]",
        b"\"x\"",
        b"{\"cniVersion\": null}",
        b"{\"cniVersion\": \"1.0.0\", \"name\": 1, \"type\": []}",
        b"{\"cniVersion\": \"1.0.0\", \"name\": \"n\", \"type\": \"t\", \"prevResult\": {\"ips\": [null, 1, {}]}}",
        b"\xff\xfe",
        b"{\"cniVersion\": \"1.0.0\", \"name\": \"n\", \"type\": \"t\", \"timeout\": 1e999}",
    ];
    for stdin in inputs {
        for command in [add, del, check, status, gc, version] {
            let reply = command(&Invocation {
                env: &env,
                stdin,
                agent: &agent,
            });
            if reply.exit_code != 0 {
                let error: Value = serde_json::from_slice(&reply.stdout).expect("error JSON");
                assert!(error["code"].as_u64().is_some_and(|code| code > 0), "{error}");
            }
        }
    }
}

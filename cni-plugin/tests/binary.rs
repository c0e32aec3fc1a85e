//! The real `ambit-cni` binary, exec'd as a runtime would (environment, stdin, stdout, exit
//! code), against a fake node agent: a unix listener in a temporary directory that records each
//! request line and answers with a scripted reply.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use ambit_cni::protocol::{PodCommand, PodReply, PodRequest};
use serde_json::{Value, json};
use tempfile::TempDir;

/// What one exec of the plugin produced.
#[derive(Debug)]
struct Run {
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success_without_output(&self) {
        assert_eq!(self.exit_code, Some(0), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
    }

    /// The CNI error printed on stdout; the exit code must say failure.
    fn error(&self) -> Value {
        assert!(
            self.exit_code.is_some_and(|code| code != 0),
            "expected a failure: {self:?}"
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }
}

/// Execs the plugin with exactly `env` (nothing inherited) and `stdin`.
fn exec(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ambit-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait for ambit-cni");
    Run {
        exit_code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A node agent that answers each connection with the next of its replies.
struct FakeAgent {
    _dir: TempDir,
    socket: PathBuf,
    requests: mpsc::Receiver<PodRequest>,
}

impl FakeAgent {
    fn start(replies: Vec<PodReply>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake agent");
        let (sender, requests) = mpsc::channel();
        thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else { return };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let request: PodRequest = serde_json::from_str(&line).expect("the plugin sends one PodRequest line");
                let _ = sender.send(request);
                let mut answer = serde_json::to_vec(&reply).expect("encode reply");
                answer.push(b'\n');
                let _ = reader.into_inner().write_all(&answer);
            }
        });
        Self {
            _dir: dir,
            socket,
            requests,
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().expect("UTF-8 temp path")
    }

    fn request(&self) -> PodRequest {
        self.requests
            .recv_timeout(Duration::from_secs(10))
            .expect("the plugin sent a request")
    }
}

/// A socket path where nothing listens.
fn absent_socket() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir
        .path()
        .join("agent.sock")
        .to_str()
        .expect("UTF-8 temp path")
        .to_owned();
    (dir, socket)
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "5a:9e:2d:00:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:f4:00:07", "sandbox": "/var/run/netns/cni-1234"},
        ],
        "ips": [
            {"address": "10.244.0.7/24", "gateway": "10.244.0.1", "interface": 1},
            {"address": "fd00:10:244::7/64", "interface": 1},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    })
}

fn config(version: &str, socket: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "agentSocket": socket,
        "timeout": "5s",
        "runtimeConfig": {"podAnnotations": {}},
        "prevResult": prev_result(),
    })
}

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f;\
    K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=8f1e2d3c-0000-4a4a-9b9b-123456789abc";

fn pod_env(command: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", POD_ARGS),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn without(mut env: Vec<(&'static str, &'static str)>, name: &str) -> Vec<(&'static str, &'static str)> {
    env.retain(|(known, _)| *known != name);
    env
}

fn replacing(
    env: Vec<(&'static str, &'static str)>,
    name: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut env = without(env, name);
    env.push((name, value));
    env
}

#[test]
fn add_hands_the_pod_to_the_agent_and_prints_prev_result() {
    let agent = FakeAgent::start(vec![PodReply::Ok { enrolled: true }]);
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_file = log_dir.path().join("ambit-cni.log");
    let mut stdin = config("1.1.0", agent.socket());
    stdin["logFile"] = json!(log_file);
    let run = exec(&pod_env("ADD"), &stdin.to_string());

    assert_eq!(run.exit_code, Some(0), "{run:?}");
    let mut expected = prev_result();
    expected["cniVersion"] = json!("1.1.0");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).ok(),
        Some(expected),
        "{run:?}"
    );
    assert_eq!(run.stderr, "", "logs go to logFile");

    assert_eq!(
        agent.request(),
        PodRequest {
            command: PodCommand::Add,
            container_id: "c0ffee".into(),
            netns: Some("/var/run/netns/cni-1234".into()),
            interface: "eth0".into(),
            pod_namespace: "shop".into(),
            pod_name: "cart-7d9f".into(),
            pod_uid: Some("8f1e2d3c-0000-4a4a-9b9b-123456789abc".into()),
            ips: vec!["10.244.0.7".parse().expect("ip"), "fd00:10:244::7".parse().expect("ip")],
        }
    );
    let log = std::fs::read_to_string(&log_file).expect("log file written");
    assert!(log.contains("cmd=ADD container=\"c0ffee\""), "{log}");
    assert!(log.contains("pod shop/cart-7d9f added; enrolled=true"), "{log}");
}

#[test]
fn add_refused_by_the_agent_passes_its_error_on() {
    let agent = FakeAgent::start(vec![PodReply::Error {
        code: 11,
        msg: "ztunnel did not acknowledge pod shop/cart-7d9f".into(),
        details: "ztunnel is not connected to the agent".into(),
    }]);
    let run = exec(&pod_env("ADD"), &config("1.0.0", agent.socket()).to_string());
    assert_eq!(
        run.error(),
        json!({
            "cniVersion": "1.0.0",
            "code": 11,
            "msg": "ztunnel did not acknowledge pod shop/cart-7d9f",
            "details": "ztunnel is not connected to the agent",
        })
    );
    assert_eq!(agent.request().command, PodCommand::Add);
    assert!(
        run.stderr.contains("level=error"),
        "errors are logged on stderr without logFile: {run:?}"
    );
}

#[test]
fn add_without_the_agent_fails_with_try_again_later() {
    let (_dir, socket) = absent_socket();
    let run = exec(&pod_env("ADD"), &config("1.0.0", &socket).to_string());
    let error = run.error();
    assert_eq!(error["code"], 11);
    let msg = error["msg"].as_str().expect("msg");
    assert!(
        msg.starts_with(&format!(
            "no answer from the node agent at {socket} for ADD: cannot connect: "
        )),
        "{msg}"
    );
}

#[test]
fn add_with_a_silent_agent_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Accepts and reads, never answers.
    let silent = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let mut stdin = config("1.0.0", socket.to_str().expect("UTF-8 path"));
    stdin["timeout"] = json!(0.3);
    let run = exec(&pod_env("ADD"), &stdin.to_string());
    let error = run.error();
    assert_eq!(error["code"], 11);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|msg| msg.ends_with("no reply within 300ms")),
        "{error}"
    );
    drop(silent.join());
}

#[test]
fn add_without_cni_netns_is_refused() {
    let agent = FakeAgent::start(vec![]);
    let run = exec(
        &without(pod_env("ADD"), "CNI_NETNS"),
        &config("1.0.0", agent.socket()).to_string(),
    );
    let error = run.error();
    assert_eq!(error["code"], 4);
    assert_eq!(error["msg"], "CNI_NETNS is not set; the runtime must set it for ADD");
}

#[test]
fn add_with_an_odd_pod_name_is_refused() {
    let agent = FakeAgent::start(vec![]);
    let env = replacing(
        pod_env("ADD"),
        "CNI_ARGS",
        "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart\"$(rm -rf /)\u{1b}[0m",
    );
    let error = exec(&env, &config("1.0.0", agent.socket()).to_string()).error();
    assert_eq!(error["code"], 4);
    assert_eq!(
        error["msg"],
        "CNI_ARGS K8S_POD_NAME=\"cart\\\"$(rm -rf /)\\u{1b}[0m\" is not a valid Kubernetes pod name: \
         only lowercase letters, digits, `-` and `.` are allowed"
    );
}

#[test]
fn add_of_a_first_plugin_is_refused() {
    let agent = FakeAgent::start(vec![]);
    let mut stdin = config("1.0.0", agent.socket());
    stdin.as_object_mut().map(|config| config.remove("prevResult"));
    let error = exec(&pod_env("ADD"), &stdin.to_string()).error();
    assert_eq!(error["code"], 7);
    assert!(
        error["msg"].as_str().is_some_and(|msg| msg.contains("no `prevResult`")),
        "{error}"
    );
}

#[test]
fn del_twice_without_a_netns() {
    let agent = FakeAgent::start(vec![PodReply::Ok { enrolled: false }, PodReply::Ok { enrolled: false }]);
    let mut stdin = config("1.0.0", agent.socket());
    stdin.as_object_mut().map(|config| config.remove("prevResult"));
    for env in [
        without(pod_env("DEL"), "CNI_NETNS"),
        replacing(pod_env("DEL"), "CNI_NETNS", ""),
    ] {
        exec(&env, &stdin.to_string()).assert_success_without_output();
        let request = agent.request();
        assert_eq!(
            (request.command, request.netns, request.ips),
            (PodCommand::Del, None, vec![])
        );
        assert_eq!(
            (request.pod_namespace.as_str(), request.pod_name.as_str()),
            ("shop", "cart-7d9f")
        );
    }
}

#[test]
fn del_with_the_agent_down_succeeds() {
    let (_dir, socket) = absent_socket();
    let run = exec(&pod_env("DEL"), &config("1.0.0", &socket).to_string());
    run.assert_success_without_output();
    assert!(run.stderr.contains("level=warn"), "{run:?}");
    assert!(run.stderr.contains("succeeds without the agent"), "{run:?}");
}

#[test]
fn check_asks_the_agent() {
    let agent = FakeAgent::start(vec![
        PodReply::Ok { enrolled: true },
        PodReply::Error {
            code: 100,
            msg: "redirection rules missing in pod shop/cart-7d9f".into(),
            details: String::new(),
        },
    ]);
    let stdin = config("1.1.0", agent.socket()).to_string();
    exec(&pod_env("CHECK"), &stdin).assert_success_without_output();
    assert_eq!(agent.request().command, PodCommand::Check);
    let error = exec(&pod_env("CHECK"), &stdin).error();
    assert_eq!(
        error,
        json!({"cniVersion": "1.1.0", "code": 100, "msg": "redirection rules missing in pod shop/cart-7d9f"})
    );
}

#[test]
fn version() {
    let run = exec(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion": "1.0.0"}"#);
    assert_eq!(run.exit_code, Some(0), "{run:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).ok(),
        Some(json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
    );
    let run = exec(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).ok(),
        Some(json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
    );
}

#[test]
fn unsupported_version_is_refused() {
    let (_dir, socket) = absent_socket();
    let error = exec(&pod_env("ADD"), &config("0.4.0", &socket).to_string()).error();
    assert_eq!(
        error,
        json!({
            "cniVersion": "0.4.0",
            "code": 1,
            "msg": "unsupported cniVersion \"0.4.0\"; ambit-cni supports 1.0.0, 1.1.0",
            "details": "set `cniVersion` in the CNI config list to 1.0.0 or 1.1.0",
        })
    );
}

#[test]
fn malformed_json_is_refused() {
    let error = exec(&pod_env("ADD"), "{\n  \"cniVersion\": \"1.0.0\"\n  \"name\": \"x\"\n}").error();
    assert_eq!(error["code"], 6);
    assert_eq!(
        error["msg"],
        "the network config on stdin is not valid JSON: expected `,` or `}` at line 3 column 3"
    );
}

#[test]
fn unknown_command_is_refused() {
    let error = exec(&[("CNI_COMMAND", "FINALIZE")], "{}").error();
    assert_eq!(error["code"], 4);
    assert_eq!(error["cniVersion"], "1.1.0");
    let error = exec(&[], "{}").error();
    assert_eq!(error["code"], 4);
}

#[test]
fn status_up_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let _listener = UnixListener::bind(&socket).expect("bind");
    let socket = socket.to_str().expect("UTF-8 path");
    exec(&[("CNI_COMMAND", "STATUS")], &config("1.1.0", socket).to_string()).assert_success_without_output();

    let (_dir, absent) = absent_socket();
    let error = exec(&[("CNI_COMMAND", "STATUS")], &config("1.1.0", &absent).to_string()).error();
    assert_eq!(error["code"], 50);
    assert!(
        error["msg"].as_str().is_some_and(|msg| msg.contains(&absent)),
        "{error}"
    );
}

#[test]
fn gc_succeeds() {
    let (_dir, socket) = absent_socket();
    let mut stdin = config("1.1.0", &socket);
    stdin.as_object_mut().map(|config| config.remove("prevResult"));
    stdin["cni.dev/valid-attachments"] = json!([{"containerID": "c0ffee", "ifname": "eth0"}]);
    stdin["cni.dev/attachments"] = stdin["cni.dev/valid-attachments"].clone();
    exec(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &stdin.to_string(),
    )
    .assert_success_without_output();
}

#[test]
fn socket_path_is_checked_before_connecting() {
    let error = exec(&pod_env("ADD"), &config("1.0.0", "run/agent.sock").to_string()).error();
    assert_eq!(error["code"], 7);
    assert_eq!(
        error["msg"],
        "network config field `agentSocket` is invalid: \"run/agent.sock\" is not an absolute path"
    );
}

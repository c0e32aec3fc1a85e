//! The CNI commands. Each takes the runtime's environment, stdin and an [`Agent`], and returns
//! what to print and the exit code; `main` only dispatches on `CNI_COMMAND`. Failures become the
//! spec's error JSON here, in the config's `cniVersion`, through [`CniError::code`].

use std::io::Read;

use serde_json::json;

use crate::{
    agent::Agent,
    args::PodIdentity,
    environment::{Command, Environment},
    error::{CniError, Quoted},
    log::Log,
    netconf::{self, CniVersion, NetConf, PrevResult, SUPPORTED_VERSIONS},
    protocol::{PodCommand, PodReply, PodRequest},
};

/// The largest network config we read from stdin.
pub const MAX_STDIN_BYTES: usize = 4 * 1024 * 1024;

/// One invocation's inputs.
pub struct Invocation<'a> {
    pub env: &'a Environment,
    pub stdin: &'a [u8],
    pub agent: &'a dyn Agent,
}

/// What the process prints on stdout, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub exit_code: u8,
}

impl Reply {
    fn success(stdout: Vec<u8>) -> Self {
        Self { stdout, exit_code: 0 }
    }

    fn failure(error: &CniError, cni_version: &str, log: &Log) -> Self {
        log.error(format_args!(
            "{} (CNI error code {})",
            error.log_message(),
            error.code()
        ));
        Self {
            stdout: error.to_json(cni_version),
            exit_code: 1,
        }
    }
}

/// Reads the network config from stdin, refusing more than [`MAX_STDIN_BYTES`].
pub fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut stdin = Vec::new();
    input
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(CniError::ReadStdin)?;
    if stdin.len() > MAX_STDIN_BYTES {
        return Err(CniError::StdinTooLarge { limit: MAX_STDIN_BYTES });
    }
    Ok(stdin)
}

/// A failure before any config was read (no or unknown `CNI_COMMAND`, unreadable stdin).
pub fn fail(error: CniError) -> Reply {
    Reply::failure(&error, CniVersion::LATEST.as_str(), &Log::stderr())
}

/// VERSION: the versions we speak, answered in the requested version if we speak it.
/// Stdin may be empty (old runtimes); the spec sends `{"cniVersion": ...}`.
pub fn version(invocation: &Invocation<'_>) -> Reply {
    let requested = if invocation.stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match netconf::parse_json(invocation.stdin) {
            Ok(config) => netconf::declared_version(&config).and_then(CniVersion::parse),
            Err(error) => return fail(error),
        }
    };
    let answer = json!({
        "cniVersion": requested.unwrap_or(CniVersion::LATEST).as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    let mut stdout = answer.to_string().into_bytes();
    stdout.push(b'\n');
    Reply::success(stdout)
}

/// ADD: hands the pod to the agent and, once the agent says it is done (enrolled and
/// acknowledged by ztunnel, or not in the mesh), passes `prevResult` through. Any other outcome
/// fails the ADD, so an enrolled pod never starts unmeshed.
pub fn add(invocation: &Invocation<'_>) -> Reply {
    run(invocation, Command::Add, |session| {
        let (request, prev_result) = session.attached_pod(Command::Add)?;
        let enrolled = session.ask(&request, Command::Add)?;
        session.log.info(format_args!(
            "pod {}/{} added; enrolled={enrolled} ips={:?}",
            request.pod_namespace, request.pod_name, request.ips
        ));
        prev_result.passthrough(session.conf.cni_version)
    })
}

/// CHECK: asks the agent whether the pod is as ADD left it; success prints nothing.
pub fn check(invocation: &Invocation<'_>) -> Reply {
    run(invocation, Command::Check, |session| {
        let (request, _) = session.attached_pod(Command::Check)?;
        let enrolled = session.ask(&request, Command::Check)?;
        session.log.info(format_args!(
            "pod {}/{} checked; enrolled={enrolled}",
            request.pod_namespace, request.pod_name
        ));
        Ok(Vec::new())
    })
}

/// DEL: idempotent and as lenient as the spec asks. The netns and `prevResult` may be gone; a
/// container without a Kubernetes pod identity was refused by ADD, so there is nothing to undo;
/// and when the agent gives no usable answer (unreachable, timed out, garbled reply) the DEL
/// still succeeds, logged as a warning, because the agent reconciles its pods from the node when
/// it is back, while a failing DEL would keep the runtime from tearing the sandbox down. Only an
/// explicit refusal by the agent, or a runtime that omits `CNI_CONTAINERID`/`CNI_IFNAME`, fails it.
pub fn del(invocation: &Invocation<'_>) -> Reply {
    run(invocation, Command::Del, |session| {
        let env = session.invocation.env;
        let container_id = env.container_id(Command::Del)?;
        let interface = env.ifname(Command::Del)?;
        let netns = env.optional_netns().unwrap_or_else(|error| {
            session
                .log
                .warn(format_args!("ignoring CNI_NETNS: {}", error.log_message()));
            None
        });
        let pod = match env.cni_args().and_then(|args| Ok(PodIdentity::from_args(&args)?)) {
            Ok(pod) => pod,
            Err(error) => {
                session.log.warn(format_args!(
                    "nothing to undo, ADD refuses such containers: {}",
                    error.log_message()
                ));
                return Ok(Vec::new());
            }
        };
        let ips = match session.conf.prev_result.as_ref().map(PrevResult::pod_ips).transpose() {
            Ok(ips) => ips.unwrap_or_default(),
            Err(error) => {
                session
                    .log
                    .warn(format_args!("ignoring prevResult: {}", error.log_message()));
                Vec::new()
            }
        };
        let request = pod_request(PodCommand::Del, container_id, netns, interface, pod, ips);
        match session.ask(&request, Command::Del) {
            Ok(_) => {
                session.log.info(format_args!(
                    "pod {}/{} deleted",
                    request.pod_namespace, request.pod_name
                ));
                Ok(Vec::new())
            }
            Err(error @ CniError::Agent { .. }) => {
                session.log.warn(format_args!(
                    "DEL of pod {}/{} succeeds without the agent, which reconciles when it is back: {}",
                    request.pod_namespace,
                    request.pod_name,
                    error.log_message()
                ));
                Ok(Vec::new())
            }
            Err(error) => Err(error),
        }
    })
}

/// STATUS (spec 1.1): ready when the agent's socket accepts connections, else error 50 so the
/// runtime holds back ADDs. Only connects; sends no request.
pub fn status(invocation: &Invocation<'_>) -> Reply {
    run(invocation, Command::Status, |session| {
        session.needs_version_1_1(Command::Status)?;
        let socket = &session.conf.agent_socket;
        invocation
            .agent
            .probe(socket, session.conf.timeout)
            .map_err(|source| CniError::AgentNotReady {
                socket: socket.clone(),
                source,
            })?;
        Ok(Vec::new())
    })
}

/// GC (spec 1.1): nothing to do. The plugin keeps no state; the agent reconciles enrolled pods
/// against the pods and netns on its node on its own, so the valid attachments are only logged.
pub fn gc(invocation: &Invocation<'_>) -> Reply {
    run(invocation, Command::Gc, |session| {
        session.needs_version_1_1(Command::Gc)?;
        match &session.conf.valid_attachments {
            Some(valid) => session
                .log
                .info(format_args!("{} valid attachments; the agent reconciles", valid.len())),
            None => session
                .log
                .info(format_args!("no cni.dev/valid-attachments; the agent reconciles")),
        }
        Ok(Vec::new())
    })
}

/// Parses the config, opens the log, runs `body` and turns its outcome into the reply.
fn run(
    invocation: &Invocation<'_>,
    command: Command,
    body: impl FnOnce(&Session<'_>) -> Result<Vec<u8>, CniError>,
) -> Reply {
    let config = match netconf::parse_json(invocation.stdin) {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    let declared = netconf::declared_version(&config)
        .unwrap_or(CniVersion::LATEST.as_str())
        .to_owned();
    let conf = match NetConf::from_value(config) {
        Ok(conf) => conf,
        Err(error) => return Reply::failure(&error, &declared, &Log::stderr()),
    };
    let mut log = Log::open(conf.log_file.as_deref()).with("cmd", command.as_str());
    if let Some(container) = invocation.env.container_id_for_logs() {
        log = log.with("container", container);
    }
    log = log.with("network", Quoted(&conf.name));
    let session = Session { invocation, conf, log };
    match body(&session) {
        Ok(stdout) => {
            session.log.info(format_args!("{} succeeded", command.as_str()));
            Reply::success(stdout)
        }
        Err(error) => Reply::failure(&error, session.conf.cni_version.as_str(), &session.log),
    }
}

/// An invocation whose config parsed.
struct Session<'a> {
    invocation: &'a Invocation<'a>,
    conf: NetConf,
    log: Log,
}

impl Session<'_> {
    /// ADD and CHECK: the pod attached by the plugins before us, all of it required.
    fn attached_pod(&self, command: Command) -> Result<(PodRequest, &PrevResult), CniError> {
        let env = self.invocation.env;
        let container_id = env.container_id(command)?;
        let netns = env.netns(command)?;
        let interface = env.ifname(command)?;
        let pod = PodIdentity::from_args(&env.cni_args()?)?;
        let prev_result = self.conf.prev_result.as_ref().ok_or(CniError::MissingPrevResult)?;
        let ips = prev_result.pod_ips()?;
        let pod_command = if command == Command::Check {
            PodCommand::Check
        } else {
            PodCommand::Add
        };
        Ok((
            pod_request(pod_command, container_id, Some(netns), interface, pod, ips),
            prev_result,
        ))
    }

    /// Sends `request`; `Ok(enrolled)` when the agent says it is done.
    fn ask(&self, request: &PodRequest, command: Command) -> Result<bool, CniError> {
        let socket = &self.conf.agent_socket;
        match self.invocation.agent.call(socket, self.conf.timeout, request) {
            Ok(PodReply::Ok { enrolled }) => Ok(enrolled),
            Ok(PodReply::Error { code, msg, details }) => Err(CniError::AgentRefused { code, msg, details }),
            Err(source) => Err(CniError::Agent {
                socket: socket.clone(),
                command: command.as_str(),
                source,
            }),
        }
    }

    fn needs_version_1_1(&self, command: Command) -> Result<(), CniError> {
        if self.conf.cni_version < CniVersion::V1_1_0 {
            return Err(CniError::CommandNeedsNewerVersion {
                command: command.as_str(),
                version: self.conf.cni_version.as_str(),
            });
        }
        Ok(())
    }
}

fn pod_request(
    command: PodCommand,
    container_id: String,
    netns: Option<std::path::PathBuf>,
    interface: String,
    pod: PodIdentity,
    ips: Vec<std::net::IpAddr>,
) -> PodRequest {
    PodRequest {
        command,
        container_id,
        netns,
        interface,
        pod_namespace: pod.namespace,
        pod_name: pod.name,
        pod_uid: pod.uid,
        ips,
    }
}

#[cfg(test)]
mod tests;

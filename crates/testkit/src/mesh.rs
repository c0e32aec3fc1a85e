//! Running the real `ztunnel` binary on a [`Network`]: a throwaway CA, the local config file
//! (workloads, services, policies), one process per node, readiness, metrics and memory; or the
//! real `ambit-operator` on a node, serving xDS and certificates to ztunnels in operator mode. The
//! config types here only *write* ztunnel's YAML; parsing it is ztunnel's (and the model's) job.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{Network, Node, Pod, ProcessHandle, http};

/// Admin endpoint (`/config_dump`) inside the node namespace.
pub const ADMIN_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// Metrics endpoint port (ztunnel listens on 0.0.0.0 in the node namespace).
pub const METRICS_PORT: u16 = 15020;
/// Readiness endpoint port (ztunnel listens on 0.0.0.0 in the node namespace).
pub const READINESS_PORT: u16 = 15021;

/// A self-signed root CA written as `ca.pem` and `ca-key.pem`.
#[derive(Clone, Debug)]
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Generates an ECDSA P-256 root (`O=ambit`) and writes both files into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<TestCa> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generate CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "ambit");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ambit test root");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-sign CA certificate")?;
        let ca = TestCa {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
        };
        write_file(&ca.cert, &cert.pem())?;
        write_file(&ca.key, &key.serialize_pem())?;
        Ok(ca)
    }
}

/// ztunnel's local config file.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    pub trust_domain: String,
    pub workloads: Vec<WorkloadConfig>,
    pub services: Vec<ServiceConfig>,
    /// Istio-shaped AuthorizationPolicy objects (see [`deny_principals_policy`]).
    pub authorization_policies: Vec<serde_norway::Value>,
    pub peer_authentications: Vec<serde_norway::Value>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadConfig {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub addresses: Vec<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
    /// `/run/netns/NAME` of the pod.
    pub netns: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

impl MeshConfig {
    /// An empty config for trust domain `cluster.local`.
    pub fn new() -> MeshConfig {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            workloads: Vec::new(),
            services: Vec::new(),
            authorization_policies: Vec::new(),
            peer_authentications: Vec::new(),
        }
    }

    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_norway::to_string(self).context("serialize ztunnel config")
    }

    /// Writes the YAML atomically (temp file + rename), so a watching ztunnel never reads half.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_file(path, &self.to_yaml()?)
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig::new()
    }
}

impl WorkloadConfig {
    /// The workload entry for `pod`, labelled `app: <app>`.
    pub fn for_pod(pod: &Pod, namespace: &str, service_account: &str, app: &str) -> WorkloadConfig {
        WorkloadConfig {
            name: pod.name.clone(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            node: pod.node.clone(),
            addresses: vec![pod.ip],
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            netns: pod.netns.path(),
        }
    }
}

impl ServiceConfig {
    /// A service selecting `app: <app>` with one `port → target_port` mapping.
    pub fn for_app(
        name: &str,
        namespace: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        app: &str,
    ) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            namespace: namespace.into(),
            vips: vec![vip],
            ports: vec![ServicePort { port, target_port }],
            selector: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        }
    }
}

/// A DENY AuthorizationPolicy for every workload of `namespace`, matching sources whose
/// principal (`TRUST_DOMAIN/ns/NS/sa/SA`) is in `principals`. Istio's shape, with the `from`
/// entries flattened as ztunnel's local config has them (`from: [{principals: [..]}]`).
pub fn deny_principals_policy(name: &str, namespace: &str, principals: &[&str]) -> anyhow::Result<serde_norway::Value> {
    let quoted: Vec<String> = principals.iter().map(|p| format!("{p:?}")).collect();
    let yaml = format!(
        "name: {name}\nnamespace: {namespace}\naction: DENY\nrules:\n  - from: [ {{ principals: [{}] }} ]\n",
        quoted.join(", ")
    );
    serde_norway::from_str(&yaml).context("build DENY policy")
}

/// One running ztunnel, in a node's namespace.
#[derive(Clone, Debug)]
pub struct Ztunnel {
    pub node: Node,
    pub process: ProcessHandle,
}

/// Paths ztunnel needs to start.
#[derive(Clone, Debug)]
pub struct ZtunnelFiles {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub ca: TestCa,
}

impl Network {
    /// Starts `ztunnel --config .. --node NODE --ca-cert .. --ca-key ..` (plus `extra_args`) in
    /// `node`'s namespace with the default admin/metrics/readiness addresses. Call
    /// [`Ztunnel::wait_ready`] before sending traffic.
    pub fn spawn_ztunnel(&mut self, node: &Node, files: &ZtunnelFiles, extra_args: &[&str]) -> anyhow::Result<Ztunnel> {
        let mut cmd = Command::new(&files.binary);
        cmd.arg("--config")
            .arg(&files.config)
            .args(["--node", &node.name])
            .arg("--ca-cert")
            .arg(&files.ca.cert)
            .arg("--ca-key")
            .arg(&files.ca.key);
        self.spawn_ztunnel_command(node, cmd, extra_args)
    }

    /// Spawns a ztunnel `cmd` (its mode's flags set) in `node`'s namespace with the default
    /// admin/metrics/readiness addresses, then `extra_args`.
    fn spawn_ztunnel_command(&mut self, node: &Node, mut cmd: Command, extra_args: &[&str]) -> anyhow::Result<Ztunnel> {
        cmd.args(["--admin-addr", &ADMIN_ADDR.to_string()])
            .args(["--metrics-addr", &format!("0.0.0.0:{METRICS_PORT}")])
            .args(["--readiness-addr", &format!("0.0.0.0:{READINESS_PORT}")])
            .args(extra_args);
        let process = self.spawn(&node.netns, cmd)?;
        Ok(Ztunnel {
            node: node.clone(),
            process,
        })
    }
}

/// The operator's gRPC port (xDS and CA).
pub const OPERATOR_GRPC_PORT: u16 = 15012;
/// The operator's monitoring port (`/metrics`, `/readyz`).
pub const OPERATOR_MONITORING_PORT: u16 = 15014;
/// A DNS name in the operator's serving certificate (its default), which ztunnels verify.
pub const OPERATOR_SERVER_NAME: &str = "ambit-operator.ambit-system.svc";

/// What `ambit-operator` needs in local (manifest directory) mode.
#[derive(Clone, Debug)]
pub struct OperatorFiles {
    pub binary: PathBuf,
    /// The watched directory of Kubernetes YAML.
    pub manifests: PathBuf,
    /// The bootstrap token YAML that authenticates ztunnels.
    pub bootstrap_tokens: PathBuf,
    /// Where the operator generates its CA and writes `root-cert.pem`.
    pub state_dir: PathBuf,
}

/// One running operator, in a node's namespace, serving on that node's underlay address so
/// every node reaches it over the underlay bridge.
#[derive(Clone, Debug)]
pub struct Operator {
    pub node: Node,
    pub process: ProcessHandle,
    pub grpc_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    /// The mesh root the operator publishes (`<state dir>/root-cert.pem`).
    pub root_cert: PathBuf,
}

/// What ztunnel needs to run against an operator.
#[derive(Clone, Debug)]
pub struct XdsZtunnelFiles {
    pub binary: PathBuf,
    /// `https://IP:PORT` of the operator.
    pub xds_address: String,
    pub token_file: PathBuf,
    pub root_cert: PathBuf,
    /// The node agent's ZDS socket (`--zds-socket`): pods are handed over by the agent.
    pub zds_socket: PathBuf,
}

/// Writes the operator's bootstrap-token file (`<dir>/bootstrap-tokens.yaml`) with one ztunnel
/// token per node, and each node's token to `<dir>/<node>.token`; returns the token file's path.
pub fn write_bootstrap_tokens(dir: &Path, nodes: &[&Node]) -> anyhow::Result<PathBuf> {
    let mut tokens = String::from("tokens:\n");
    for node in nodes {
        let token = format!("bootstrap-token-{}-{}", node.name, std::process::id());
        tokens.push_str(&format!(
            "  - {{token: {token}, namespace: ambit-system, serviceAccount: ztunnel, node: {}}}\n",
            node.name
        ));
        write_file(&dir.join(format!("{}.token", node.name)), &token)?;
    }
    let path = dir.join("bootstrap-tokens.yaml");
    write_file(&path, &tokens)?;
    Ok(path)
}

impl OperatorFiles {
    /// A local-mode layout under `dir`: an empty `manifests/`, `operator-state/`, and bootstrap
    /// tokens for `nodes` (see [`write_bootstrap_tokens`]); the binary from [`find_operator`].
    pub fn local(dir: &Path, nodes: &[&Node]) -> anyhow::Result<OperatorFiles> {
        let manifests = dir.join("manifests");
        let state_dir = dir.join("operator-state");
        for d in [&manifests, &state_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(OperatorFiles {
            binary: find_operator(None)?,
            manifests,
            bootstrap_tokens: write_bootstrap_tokens(dir, nodes)?,
            state_dir,
        })
    }
}

impl Network {
    /// Starts `ambit-operator --manifests ..` (plus `extra_args`) in `node`'s namespace, gRPC and
    /// monitoring on the node's underlay address. Call [`Operator::wait_ready`] next.
    pub fn spawn_operator(
        &mut self,
        node: &Node,
        files: &OperatorFiles,
        extra_args: &[&str],
    ) -> anyhow::Result<Operator> {
        let grpc_addr = SocketAddr::from((node.underlay_ip, OPERATOR_GRPC_PORT));
        let monitoring_addr = SocketAddr::from((node.underlay_ip, OPERATOR_MONITORING_PORT));
        let mut cmd = Command::new(&files.binary);
        cmd.arg("--manifests")
            .arg(&files.manifests)
            .arg("--bootstrap-tokens")
            .arg(&files.bootstrap_tokens)
            .arg("--state-dir")
            .arg(&files.state_dir)
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--monitoring-addr", &monitoring_addr.to_string()])
            .args(["--pod-name", &format!("operator-{}", node.name)])
            .args(extra_args);
        let process = self.spawn(&node.netns, cmd)?;
        Ok(Operator {
            node: node.clone(),
            process,
            grpc_addr,
            monitoring_addr,
            root_cert: files.state_dir.join("root-cert.pem"),
        })
    }

    /// Starts ztunnel in operator mode (`--xds-address`, certificates from the operator's CA) in
    /// `node`'s namespace, with the default admin/metrics/readiness addresses.
    pub fn spawn_xds_ztunnel(
        &mut self,
        node: &Node,
        files: &XdsZtunnelFiles,
        extra_args: &[&str],
    ) -> anyhow::Result<Ztunnel> {
        let mut cmd = Command::new(&files.binary);
        cmd.args(["--xds-address", &files.xds_address])
            .arg("--token-file")
            .arg(&files.token_file)
            .arg("--root-cert")
            .arg(&files.root_cert)
            .args(["--operator-server-name", OPERATOR_SERVER_NAME])
            .arg("--zds-socket")
            .arg(&files.zds_socket)
            .args(["--node", &node.name]);
        self.spawn_ztunnel_command(node, cmd, extra_args)
    }
}

impl Operator {
    /// `https://IP:PORT`, ztunnel's `--xds-address`.
    pub fn xds_address(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Waits for `GET /readyz` = 200 (the manifests are read and xDS is served) and for the
    /// published root; on failure the error carries the log tail.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let result =
            http::wait_for_http_ok(&self.node.netns, self.monitoring_addr, "/readyz", timeout).and_then(|()| {
                anyhow::ensure!(self.root_cert.is_file(), "no {}", self.root_cert.display());
                Ok(())
            });
        ready_or_log("ambit-operator", &self.node, &self.process, result)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match http::http_get(&self.node.netns, self.monitoring_addr, "/metrics")? {
            (200, body) => Ok(body),
            (status, body) => bail!("ambit-operator answered /metrics with {status}: {}", body.trim()),
        }
    }
}

/// `result` of a readiness wait of `program` on `node`; a failure carries whether the process
/// still runs and its log tail.
pub(crate) fn ready_or_log(
    program: &str,
    node: &Node,
    process: &ProcessHandle,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Err(e) = result else { return Ok(()) };
    let state = match process.try_wait() {
        Ok(Some(status)) => format!("{program} exited ({status})"),
        _ => format!("{program} is running"),
    };
    bail!(
        "{program} on {} not ready: {e:#}\n{state}; log {}:\n{}",
        node.name,
        process.log_path().display(),
        process.log_tail(40)
    );
}

/// The `ambit-operator` binary: `explicit`, else next to the running executable or in
/// `target/{release,debug}`. `make test` (`cargo nextest run --workspace`) builds it; a run of
/// one package's tests alone needs `cargo build -p ambit-operator` first.
pub fn find_operator(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    find_binary("ambit-operator", "ambit-operator", explicit)
}

impl Ztunnel {
    /// Waits for `GET /healthz/ready` = 200; on failure the error carries the log tail.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT));
        let result = http::wait_for_http_ok(&self.node.netns, addr, "/healthz/ready", timeout);
        ready_or_log("ztunnel", &self.node, &self.process, result)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.get(SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)), "/metrics")
    }

    /// The admin `/config_dump` JSON.
    pub fn config_dump(&self) -> anyhow::Result<String> {
        self.get(ADMIN_ADDR, "/config_dump")
    }

    fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        match http::http_get(&self.node.netns, addr, path)? {
            (200, body) => Ok(body),
            (status, body) => bail!(
                "ztunnel on {} answered {path} with {status}: {}",
                self.node.name,
                body.trim()
            ),
        }
    }
}

/// Finds the ztunnel binary: `explicit` if given, else next to the running executable (and its
/// parent, for test binaries in `deps/`), else the workspace's `target/release`, then
/// `target/debug`.
pub fn find_ztunnel(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    find_binary("ztunnel", "ambit-ztunnel", explicit)
}

/// Binary `name` of package `package`: `explicit`, else next to the running executable (or its
/// parent directory, for test binaries in `deps/`), else in `target/{release,debug}`.
pub(crate) fn find_binary(name: &str, package: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("no {name} binary at {}", path.display());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(name));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join(name));
        }
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    candidates.push(target.join("release").join(name));
    candidates.push(target.join("debug").join(name));
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "no {name} binary found next to this executable or in target/{{release,debug}}; \
             build it with `cargo build -p {package}` (make test builds every binary) or pass its path"
        )
    })
}

/// A process's memory from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM of `pid`.
pub fn process_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// User + system CPU time `pid` has used so far (`/proc/PID/stat` utime + stime).
pub fn process_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the parenthesised command name (which may contain spaces); utime and stime
    // are fields 14 and 15 overall, i.e. 12 and 13 after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {i} in {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

/// Writes `contents` through a temporary file and a rename, so a process polling `path` (the
/// operator, the agent, ztunnel) never reads half of it.
pub fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one service and one DENY policy.
    fn sample_config() -> MeshConfig {
        let mut config = MeshConfig::new();
        config.services.push(ServiceConfig::for_app(
            "echo",
            "default",
            Ipv4Addr::new(10, 96, 0, 10),
            80,
            8080,
            "echo",
        ));
        config.authorization_policies.push(
            deny_principals_policy("deny-sleep", "default", &["cluster.local/ns/default/sa/sleep"]).unwrap_or_default(),
        );
        config
    }

    #[test]
    fn config_yaml_uses_camel_case() {
        let config = sample_config();
        let yaml = config.to_yaml().unwrap_or_default();
        assert!(yaml.contains("trustDomain: cluster.local"), "{yaml}");
        assert!(yaml.contains("targetPort: 8080"), "{yaml}");
        assert!(yaml.contains("authorizationPolicies:"), "{yaml}");
        assert!(yaml.contains("cluster.local/ns/default/sa/sleep"), "{yaml}");
        assert!(yaml.contains("peerAuthentications: []"), "{yaml}");
    }

    #[test]
    fn ztunnel_model_accepts_the_config() {
        let pod = Pod {
            netns: crate::Netns::from_name("amb-t-1-0-p1.1-client"),
            name: "client".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            node: "node1".into(),
        };
        let mut config = sample_config();
        config
            .workloads
            .push(WorkloadConfig::for_pod(&pod, "default", "sleep", "sleep"));
        let yaml = config.to_yaml().unwrap_or_default();
        if let Err(e) = ambit_model::config::parse(&yaml) {
            panic!("ztunnel's config parser rejects our YAML: {e}\n{yaml}");
        }
    }

    #[test]
    fn reads_own_memory_and_cpu() {
        let pid = std::process::id();
        let mem = process_memory(pid).unwrap_or(Memory { rss_kib: 0, hwm_kib: 0 });
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib, "{mem:?}");
        assert!(process_cpu_time(pid).is_ok());
    }
}

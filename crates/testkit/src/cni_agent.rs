//! Running the real node agent (`ambit-cni-agent`) on a node, and handing pods to it through the
//! real plugin (`ambit-cni`), as the container runtime would.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    Network, Node, Pod, ProcessHandle,
    cni::{Runtime, Sandbox},
    http,
    mesh::{find_binary, ready_or_log},
};

/// Where the agent serves `/metrics`, `/healthz` and `/readyz`, inside its node.
pub const AGENT_MONITORING_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15031);

/// The `ambit-cni-agent` binary (see [`crate::mesh::find_ztunnel`] for where it is looked for).
pub fn find_cni_agent(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    find_binary("ambit-cni-agent", "ambit-cni-agent", explicit)
}

/// The `ambit-cni` plugin binary.
pub fn find_cni_plugin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    find_binary("ambit-cni", "ambit-cni", explicit)
}

/// One node's agent: its process and the node's CNI directories and sockets.
#[derive(Clone, Debug)]
pub struct CniAgent {
    pub node: Node,
    pub process: ProcessHandle,
    /// The plugin's socket (`--socket`).
    pub socket: PathBuf,
    /// ztunnel's `--zds-socket`.
    pub zds_socket: PathBuf,
    pub state_dir: PathBuf,
    /// The node's `/etc/cni/net.d` and `/opt/cni/bin`.
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The command line, to start it again after a stop.
    binary: PathBuf,
    args: Vec<String>,
}

/// Files under `dir` for `node`'s agent.
fn node_paths(dir: &Path, node: &Node) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let base = dir.join(format!("cni-{}", node.name));
    (
        base.join("agent.sock"),
        base.join("ztunnel.sock"),
        base.join("state"),
        base.join("net.d"),
        base.join("bin"),
    )
}

impl Network {
    /// Starts `ambit-cni-agent` in `node`'s namespace reading enrollment from `manifests`, its
    /// sockets and state under `dir`, installing `plugin` into the node's CNI directories there
    /// (the conflist must exist; see [`crate::cni::bridge_conflist`]). Call
    /// [`CniAgent::wait_ready`] next.
    pub fn spawn_cni_agent(
        &mut self,
        node: &Node,
        agent: &Path,
        plugin: &Path,
        manifests: &Path,
        dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<CniAgent> {
        let (socket, zds_socket, state_dir, conf_dir, bin_dir) = node_paths(dir, node);
        for d in [&state_dir, &conf_dir, &bin_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            "--node".to_owned(),
            node.name.clone(),
            "--manifests".into(),
            path(manifests),
            "--manifest-poll".into(),
            "100ms".into(),
            "--socket".into(),
            path(&socket),
            "--zds-socket".into(),
            path(&zds_socket),
            "--state-dir".into(),
            path(&state_dir),
            "--cni-conf-dir".into(),
            path(&conf_dir),
            "--cni-bin-dir".into(),
            path(&bin_dir),
            "--plugin-binary".into(),
            path(plugin),
            "--monitoring-addr".into(),
            AGENT_MONITORING_ADDR.to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(agent);
        cmd.args(&args);
        let process = self.spawn(&node.netns, cmd)?;
        Ok(CniAgent {
            node: node.clone(),
            process,
            socket,
            zds_socket,
            state_dir,
            conf_dir,
            bin_dir,
            binary: agent.to_owned(),
            args,
        })
    }

    /// Starts a stopped agent again with the same command line.
    pub fn restart_cni_agent(&mut self, agent: &CniAgent) -> anyhow::Result<CniAgent> {
        let mut cmd = Command::new(&agent.binary);
        cmd.args(&agent.args);
        let process = self.spawn(&agent.node.netns, cmd)?;
        Ok(CniAgent {
            process,
            ..agent.clone()
        })
    }
}

impl CniAgent {
    /// The directory `spawn_cni_agent` puts `node`'s CNI configuration in, to write the
    /// conflist before the agent starts.
    pub fn conf_dir_for(dir: &Path, node: &Node) -> PathBuf {
        node_paths(dir, node).3
    }

    /// Waits for `/readyz` = 200 (source read, plugin installed).
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let result = http::wait_for_http_ok(&self.node.netns, AGENT_MONITORING_ADDR, "/readyz", timeout);
        ready_or_log("ambit-cni-agent", &self.node, &self.process, result)
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        match http::http_get(&self.node.netns, AGENT_MONITORING_ADDR, "/metrics")? {
            (200, body) => Ok(body),
            (status, body) => bail!("ambit-cni-agent answered /metrics with {status}: {}", body.trim()),
        }
    }

    /// The runtime of this node: Debian's plugins plus what the agent installed.
    pub fn runtime(&self) -> Runtime {
        Runtime {
            node: self.node.netns.clone(),
            conf_dir: self.conf_dir.clone(),
            bin_dirs: vec![PathBuf::from(crate::cni::DEBIAN_PLUGIN_DIR), self.bin_dir.clone()],
        }
    }

    /// Runs the node's chain for a pod the test wired itself (`pod`, with its address), as if
    /// the earlier plugins had returned that address.
    pub fn add_wired_pod(&self, pod: &Pod, namespace: &str) -> anyhow::Result<Value> {
        let earlier = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": "eth0", "sandbox": pod.netns.path() }],
            "ips": [{ "address": format!("{}/24", pod.ip), "interface": 0 }],
        });
        self.runtime().add_after(&wired_sandbox(pod, namespace), Some(earlier))
    }
}

/// The sandbox of a pod the test wired itself.
pub fn wired_sandbox(pod: &Pod, namespace: &str) -> Sandbox {
    Sandbox {
        namespace: namespace.to_owned(),
        name: pod.name.clone(),
        uid: format!("uid-{}", pod.name),
        container_id: format!("sandbox-{}", pod.name),
        netns: Some(pod.netns.path()),
        interface: "eth0".into(),
    }
}

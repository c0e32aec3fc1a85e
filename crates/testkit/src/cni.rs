//! The container runtime's side of CNI, for tests: a conflist's plugins run in order on ADD
//! (each given the previous one's result as `prevResult`), in reverse on DEL, each exec'd inside
//! the node's namespace with the spec's environment and its network config on stdin — what
//! containerd and CRI-O do through libcni, without them.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::Netns;

/// One pod sandbox as the runtime knows it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_id: String,
    /// `CNI_NETNS`; `None` for a DEL after the namespace is gone.
    pub netns: Option<PathBuf>,
    pub interface: String,
}

/// A plugin's failure: the spec's error (when it printed one) and what it said.
#[derive(Debug, thiserror::Error)]
#[error("CNI {command} failed in plugin {plugin}: code {code:?}: {msg} (stderr: {stderr})")]
pub struct CniError {
    pub command: &'static str,
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
    pub stderr: String,
}

/// Runs the conflist of `conf_dir` (the first `*.conflist`, read afresh on every call, as the
/// runtime does) from the plugin directories `bin_dirs`, inside `node`.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub node: Netns,
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

impl Runtime {
    /// The conflist the runtime would use now.
    pub fn conflist(&self) -> anyhow::Result<(PathBuf, Value)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("cannot read {}", self.conf_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .with_context(|| format!("no conflist in {}", self.conf_dir.display()))?;
        let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let value = serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        Ok((path, value))
    }

    /// ADD through the whole chain; returns the final result.
    pub fn add(&self, sandbox: &Sandbox) -> anyhow::Result<Value> {
        self.add_after(sandbox, None)
    }

    /// ADD through the chain as if an earlier plugin had returned `earlier` (for pods whose
    /// interface a test wired itself).
    pub fn add_after(&self, sandbox: &Sandbox, earlier: Option<Value>) -> anyhow::Result<Value> {
        let (_, conflist) = self.conflist()?;
        let mut result: Option<Value> = earlier;
        for plugin in plugins(&conflist)? {
            let out = self.exec("ADD", sandbox, &conflist, plugin, result.as_ref())?;
            result = Some(serde_json::from_str(&out).with_context(|| format!("ADD result is not JSON: {out}"))?);
        }
        result.context("empty conflist")
    }

    /// DEL through the chain in reverse, with the ADD result as `prevResult`.
    pub fn del(&self, sandbox: &Sandbox, result: Option<&Value>) -> anyhow::Result<()> {
        let (_, conflist) = self.conflist()?;
        for plugin in plugins(&conflist)?.iter().rev() {
            self.exec("DEL", sandbox, &conflist, plugin, result)?;
        }
        Ok(())
    }

    /// CHECK of the chain's plugin of type `kind` alone (Debian's `bridge` fails its own CHECK
    /// once the bridge's MAC follows a newer port, a known quirk unrelated to the pod).
    pub fn check_plugin(&self, kind: &str, sandbox: &Sandbox, result: &Value) -> anyhow::Result<()> {
        let (_, conflist) = self.conflist()?;
        let plugin = plugins(&conflist)?
            .iter()
            .find(|p| p["type"] == kind)
            .with_context(|| format!("no {kind} in the conflist"))?;
        self.exec("CHECK", sandbox, &conflist, plugin, Some(result)).map(drop)
    }

    fn exec(
        &self,
        command: &'static str,
        sandbox: &Sandbox,
        conflist: &Value,
        plugin: &Value,
        prev: Option<&Value>,
    ) -> anyhow::Result<String> {
        let kind = plugin["type"].as_str().context("plugin without a type")?.to_owned();
        let mut config = plugin.clone();
        config["cniVersion"] = conflist["cniVersion"].clone();
        config["name"] = conflist["name"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        let binary = self
            .bin_dirs
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.is_file())
            .with_context(|| format!("plugin {kind} not found in {:?}", self.bin_dirs))?;
        let cni_path = std::env::join_paths(&self.bin_dirs).context("CNI_PATH")?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            sandbox.namespace, sandbox.name, sandbox.container_id, sandbox.uid
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.node.name()])
            .arg(&binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", sandbox.netns.as_deref().unwrap_or(Path::new("")))
            .env("CNI_IFNAME", &sandbox.interface)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&serde_json::to_vec(&config)?)?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let error: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| json!({ "msg": stdout }));
            bail!(CniError {
                command,
                plugin: kind,
                code: error["code"].as_u64(),
                msg: format!(
                    "{} {}",
                    error["msg"].as_str().unwrap_or(""),
                    error["details"].as_str().unwrap_or("")
                )
                .trim()
                .to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(stdout)
    }
}

fn plugins(conflist: &Value) -> anyhow::Result<&Vec<Value>> {
    conflist["plugins"].as_array().context("conflist without plugins")
}

/// A conflist of Debian's `bridge` + `host-local` for `node`'s pods: bridge `br0` (which the
/// node already has, with the gateway address), addresses from `range_start..range_end` of the
/// node's pod CIDR, leases kept in `data_dir`.
pub fn bridge_conflist(pod_cidr: &str, gateway: &str, range_start: &str, range_end: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "ambit-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "br0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": data_dir,
                "ranges": [[{ "subnet": pod_cidr, "gateway": gateway, "rangeStart": range_start, "rangeEnd": range_end }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        }]
    })
}

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

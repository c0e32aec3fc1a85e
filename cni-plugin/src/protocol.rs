//! What the plugin and the node agent say to each other over the agent's unix stream socket: one
//! JSON [`PodRequest`] line from the plugin, one JSON [`PodReply`] line back, then the
//! connection closes. Both sides are ours and ship together, so unknown fields are refused.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the plugin's network config says otherwise (`agentSocket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambit/cni-agent.sock";

/// The CNI command the runtime ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PodCommand {
    Add,
    Del,
    Check,
}

/// One pod event, as the plugin saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRequest {
    pub command: PodCommand,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; absent on a DEL whose namespace is already gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: String,
    /// `K8S_POD_UID` from `CNI_ARGS`, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's addresses from `prevResult.ips` (without prefix length).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

impl PodRequest {
    /// `namespace/name`, how the agent keys pods.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PodReply {
    /// Done: for ADD, `enrolled` says whether the pod is now captured by ztunnel (acknowledged)
    /// or left alone (not in the mesh).
    Ok { enrolled: bool },
    /// Refused; the plugin turns it into a CNI error with this code (CNI spec: 11 = try again
    /// later, e.g. ztunnel not connected) and message.
    Error { code: u32, msg: String, details: String },
}

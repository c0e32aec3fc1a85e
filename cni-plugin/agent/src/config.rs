//! The agent's typed configuration, parsed once from flags and `AMBIT_CNI_AGENT_*` environment
//! variables. Nothing else in the crate reads the environment; tests build [`Config`] directly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ambit_capture::Backend;
use clap::Parser;

/// Command-line flags (each also settable as `AMBIT_CNI_AGENT_<FLAG>`).
#[derive(Debug, Parser)]
#[command(
    name = "ambit-cni-agent",
    version,
    about = "Ambit's node agent: enrolls the pods of this node into ztunnel"
)]
pub struct Args {
    /// This node's name: only pods scheduled here (`spec.nodeName`) are handled.
    #[arg(long, env = "AMBIT_CNI_AGENT_NODE_NAME")]
    pub node: String,
    /// Local mode: the manifest directory the operator reads (Namespaces and Pods decide
    /// enrollment), instead of a Kubernetes API server.
    #[arg(long, env = "AMBIT_CNI_AGENT_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: a kubeconfig file instead of the in-cluster config or `KUBECONFIG`.
    #[arg(long, env = "AMBIT_CNI_AGENT_KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// How often the manifest directory is rescanned (it is also rescanned on every pod ADD).
    #[arg(long, env = "AMBIT_CNI_AGENT_MANIFEST_POLL", default_value = "500ms", value_parser = parse_duration)]
    pub manifest_poll: Duration,
    /// Where the CNI plugin reaches the agent.
    #[arg(long, env = "AMBIT_CNI_AGENT_SOCKET", default_value = ambit_cni::protocol::DEFAULT_AGENT_SOCKET)]
    pub socket: PathBuf,
    /// Where ztunnel connects to receive pods (ZDS).
    #[arg(
        long,
        env = "AMBIT_CNI_AGENT_ZDS_SOCKET",
        default_value = "/var/run/ambit/ztunnel.sock"
    )]
    pub zds_socket: PathBuf,
    /// The agent's records of the pods it handled, so a restart knows their network namespaces.
    #[arg(long, env = "AMBIT_CNI_AGENT_STATE_DIR", default_value = "/var/run/ambit/cni-agent")]
    pub state_dir: PathBuf,
    /// The node's CNI configuration directory; the agent adds itself to its first conflist.
    #[arg(long, env = "AMBIT_CNI_AGENT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The node's CNI plugin directory; the agent copies `ambit-cni` there.
    #[arg(long, env = "AMBIT_CNI_AGENT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin binary to install; by default `ambit-cni` next to this executable.
    #[arg(long, env = "AMBIT_CNI_AGENT_PLUGIN_BINARY")]
    pub plugin_binary: Option<PathBuf>,
    /// Leave the node's CNI configuration and plugin directory alone (they are managed elsewhere).
    #[arg(long, env = "AMBIT_CNI_AGENT_SKIP_INSTALL")]
    pub skip_install: bool,
    /// How the in-pod rules are written: `nftables`, `iptables`, or `auto` (nftables when `nft`
    /// has JSON support, else iptables).
    #[arg(long, env = "AMBIT_CNI_AGENT_REDIRECT", default_value = "auto")]
    pub redirect: String,
    /// How long a pod ADD waits for ztunnel's acknowledgement.
    #[arg(long, env = "AMBIT_CNI_AGENT_ZTUNNEL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ztunnel_timeout: Duration,
    /// Monitoring: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "AMBIT_CNI_AGENT_MONITORING_ADDR", default_value = "127.0.0.1:15031")]
    pub monitoring_addr: SocketAddr,
    /// Remove the agent from the node (conflist entry, plugin binary, host rules) and exit.
    #[arg(long)]
    pub uninstall: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 10s: {e}"))
}

/// Where enrollment is decided from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The Kubernetes API: from this kubeconfig file, else in-cluster config or `KUBECONFIG`.
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// A local directory of manifests, rescanned every `poll`.
    Directory { path: PathBuf, poll: Duration },
}

/// Where the plugin is installed, unless the agent was told to leave the node's CNI alone.
#[derive(Clone, Debug)]
pub struct Install {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub plugin_binary: PathBuf,
}

/// The configuration the agent runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub source: Source,
    pub socket: PathBuf,
    pub zds_socket: PathBuf,
    pub state_dir: PathBuf,
    pub install: Option<Install>,
    pub backend: Backend,
    pub ztunnel_timeout: Duration,
    pub monitoring_addr: SocketAddr,
}

impl Config {
    /// Resolves flags into a config; the error names the flag and value.
    pub fn from_args(args: Args) -> Result<Config, String> {
        if args.node.is_empty() {
            return Err("--node: the node name is empty".into());
        }
        let backend = match args.redirect.as_str() {
            "auto" => Backend::detect().map_err(|e| format!("--redirect auto: {e}"))?,
            other => other.parse::<Backend>().map_err(|e| format!("--redirect: {e}"))?,
        };
        let source = match args.manifests {
            Some(path) => Source::Directory {
                path,
                poll: args.manifest_poll,
            },
            None => Source::Kubernetes {
                kubeconfig: args.kubeconfig,
            },
        };
        let install = if args.skip_install {
            None
        } else {
            let plugin_binary = match args.plugin_binary {
                Some(path) => path,
                None => std::env::current_exe()
                    .map_err(|e| format!("cannot find the agent's own executable to locate ambit-cni: {e}"))?
                    .with_file_name("ambit-cni"),
            };
            Some(Install {
                conf_dir: args.cni_conf_dir,
                bin_dir: args.cni_bin_dir,
                plugin_binary,
            })
        };
        Ok(Config {
            node: args.node,
            source,
            socket: args.socket,
            zds_socket: args.zds_socket,
            state_dir: args.state_dir,
            install,
            backend,
            ztunnel_timeout: args.ztunnel_timeout,
            monitoring_addr: args.monitoring_addr,
        })
    }
}

//! The cluster model: an underlay namespace with a bridge, "node" namespaces attached to it, and
//! "pod" namespaces on each node's bridge, all created with `ip` directly inside namespaces this
//! crate owns (the host's own namespace is never touched). [`Network`]'s `Drop` undoes it all.
//!
//! Addressing: node `i` (1-based) has `eth0` = 172.30.0.i/24 on the underlay and `br0` =
//! 10.244.i.1/24 for its pods; its `k`-th pod has 10.244.i.(k+1)/24 with a default route via
//! 10.244.i.1. Every node routes each other node's pod CIDR via that node's underlay address.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use ipnet::Ipv4Net;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    Netns,
    cleanup::{self, NAME_MARKER, Resources},
    command::ip,
    process::{self, ProcessHandle},
};

/// Underlay subnet shared by the nodes' `eth0`s.
const UNDERLAY_NET: [u8; 3] = [172, 30, 0];
/// Nodes are numbered 1..=MAX_NODES (the index is an address octet).
const MAX_NODES: usize = 250;
/// Pods per node (10.244.i.2 ..= 10.244.i.251).
const MAX_PODS: usize = 250;
/// Namespace names are kept at most this long, so `ip netns list` stays readable.
const MAX_NETNS_NAME: usize = 32;

static NETWORK_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A small cluster of namespaces. Dropping it stops every process it spawned and deletes every
/// namespace it created, also while unwinding from a panic (then it also prints the tail of each
/// process log and keeps the log directory).
#[derive(Debug)]
pub struct Network {
    prefix: String,
    underlay: Netns,
    nodes: Vec<NodeState>,
    resources: Arc<Mutex<Resources>>,
    log_dir: PathBuf,
    spawned: usize,
}

#[derive(Debug)]
struct NodeState {
    netns: Netns,
    pods: usize,
}

/// A node: a namespace with `eth0` on the underlay and bridge `br0` for its pods.
#[derive(Clone, Debug)]
pub struct Node {
    pub netns: Netns,
    /// The name given to [`Network::add_node`] (what ztunnel's `--node` and the config use).
    pub name: String,
    /// 1-based.
    pub index: u8,
    pub underlay_ip: Ipv4Addr,
    /// `10.244.<index>.0/24`.
    pub pod_cidr: Ipv4Net,
    /// `10.244.<index>.1`, `br0`'s address and the pods' default gateway.
    pub bridge_ip: Ipv4Addr,
}

/// A pod: a namespace with `eth0` on its node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: Netns,
    pub name: String,
    pub ip: Ipv4Addr,
    /// Name of the node it runs on.
    pub node: String,
}

impl Network {
    /// Creates the underlay. Fails with a clear message unless running as root with `ip`
    /// installed. Also removes namespaces left behind by earlier, killed runs.
    pub fn new(name: &str) -> anyhow::Result<Network> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "ambit-testkit builds network namespaces and must run as root (uid 0); \
             run e.g. `sudo -E cargo test -p ambit-testkit` (current euid {})",
            nix::unistd::geteuid()
        );
        ip(&["-V"]).context("iproute2's `ip` is required (Debian: apt-get install iproute2)")?;
        cleanup::remove_stale_namespaces();

        let short: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect::<String>()
            .to_ascii_lowercase();
        let counter = NETWORK_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_MARKER}-{short}-{}-{counter}-", std::process::id());
        let log_dir = std::env::temp_dir()
            .join("ambit-testkit")
            .join(prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create log directory {}", log_dir.display()))?;
        let resources = Arc::new(Mutex::new(Resources {
            log_dir: log_dir.clone(),
            ..Resources::default()
        }));
        cleanup::register(&resources);

        let mut network = Network {
            underlay: Netns::from_name(format!("{prefix}ul")),
            prefix,
            nodes: Vec::new(),
            resources,
            log_dir,
            spawned: 0,
        };
        let underlay = network.underlay.clone();
        network.create_netns(&underlay)?;
        ip(&["-n", underlay.name(), "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", underlay.name(), "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// Every namespace name this network creates starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the underlay bridge the nodes' `eth0`s attach to.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// Where process logs (and nothing else) go; removed on a clean drop, kept after a panic.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Adds node number `nodes + 1`, wired to the underlay and routed to every other node.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<Node> {
        ensure!(
            self.nodes.len() < MAX_NODES,
            "a Network holds at most {MAX_NODES} nodes"
        );
        let index = self.nodes.len() + 1;
        let octet = index as u8;
        let netns = Netns::from_name(format!("{}n{index}", self.prefix));
        self.create_netns(&netns)?;
        let ns = netns.name();
        let underlay_ip = Ipv4Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], UNDERLAY_NET[2], octet);
        let bridge_ip = Ipv4Addr::new(10, 244, octet, 1);
        let pod_cidr = Ipv4Net::new(Ipv4Addr::new(10, 244, octet, 0), 24).context("pod CIDR")?;

        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", &format!("{bridge_ip}/24"), "dev", "br0"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;

        let port = format!("n{index}");
        let ul = self.underlay.name();
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", ul,
        ])?;
        ip(&["-n", ul, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{underlay_ip}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        write_sysctl(&netns, "net/ipv4/ip_forward", "1")?;

        for (j, other) in self.nodes.iter().enumerate() {
            let j = j as u8 + 1;
            let other_ul = Ipv4Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], UNDERLAY_NET[2], j);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("10.244.{j}.0/24"),
                "via",
                &other_ul.to_string(),
            ])?;
            ip(&[
                "-n",
                other.netns.name(),
                "route",
                "add",
                &pod_cidr.to_string(),
                "via",
                &underlay_ip.to_string(),
            ])?;
        }
        self.nodes.push(NodeState {
            netns: netns.clone(),
            pods: 0,
        });
        Ok(Node {
            netns,
            name: name.to_owned(),
            index: octet,
            underlay_ip,
            pod_cidr,
            bridge_ip,
        })
    }

    /// Adds a pod on `node` (which must come from this network's [`Network::add_node`]).
    pub fn add_pod(&mut self, node: &Node, name: &str) -> anyhow::Result<Pod> {
        let prefix = self.prefix.clone();
        let state = self
            .nodes
            .get_mut(usize::from(node.index).wrapping_sub(1))
            .filter(|s| s.netns == node.netns)
            .with_context(|| format!("node {} ({}) is not part of network {prefix}", node.name, node.netns))?;
        ensure!(state.pods < MAX_PODS, "node {} already has {MAX_PODS} pods", node.name);
        state.pods += 1;
        let k = state.pods;
        let pod_ip = Ipv4Addr::new(10, 244, node.index, k as u8 + 1);

        let mut netns_name = format!("{prefix}p{}.{k}-{}", node.index, sanitize(name));
        netns_name.truncate(MAX_NETNS_NAME.max(prefix.len() + 8));
        let netns = Netns::from_name(netns_name.trim_end_matches('-'));
        self.create_netns(&netns)?;
        let (ns, node_ns) = (netns.name(), node.netns.name());
        let port = format!("vp{k}");
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", node_ns,
        ])?;
        ip(&["-n", node_ns, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &node.bridge_ip.to_string()])?;
        Ok(Pod {
            netns,
            name: name.to_owned(),
            ip: pod_ip,
            node: node.name.clone(),
        })
    }

    /// Creates an empty namespace for a pod on `node`, with only `lo` up: the CNI chain wires it
    /// (see [`crate::cni`]). Deleted with the network like the others.
    pub fn add_sandbox(&mut self, node: &Node, name: &str) -> anyhow::Result<Netns> {
        let mut netns_name = format!("{}s{}-{}", self.prefix, node.index, sanitize(name));
        netns_name.truncate(MAX_NETNS_NAME.max(self.prefix.len() + 8));
        let netns = Netns::from_name(netns_name.trim_end_matches('-'));
        self.create_netns(&netns)?;
        Ok(netns)
    }

    /// Runs `cmd` inside `ns` in its own process group, stdout and stderr to a file in
    /// [`Network::log_dir`]. The process is stopped (SIGTERM, then SIGKILL) when the network drops.
    pub fn spawn(&mut self, ns: &Netns, cmd: Command) -> anyhow::Result<ProcessHandle> {
        self.spawned += 1;
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|s| sanitize(&s.to_string_lossy()))
            .unwrap_or_default();
        let log = self.log_dir.join(format!(
            "{:02}-{program}-{}.log",
            self.spawned,
            ns.name().trim_start_matches(&self.prefix)
        ));
        let mut resources = self.resources();
        let handle = process::spawn_in(ns, cmd, &log)?;
        resources.processes.push(handle.clone());
        Ok(handle)
    }

    /// Log tails of every process this network spawned, for a failing test's message.
    pub fn process_logs(&self, lines: usize) -> String {
        let resources = self.resources();
        let mut out = String::new();
        for p in &resources.processes {
            out.push_str(&format!(
                "--- {} (pid {}, log {}):\n{}\n",
                p.name(),
                p.pid(),
                p.log_path().display(),
                p.log_tail(lines)
            ));
        }
        out
    }

    /// Tears everything down now and reports what could not be undone (drop does the same but
    /// can only print).
    pub fn close(self) -> anyhow::Result<()> {
        let errors = self.resources().cleanup();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleanup of network {} failed: {}", self.prefix, errors.join("; "))
        }
    }

    fn create_netns(&mut self, netns: &Netns) -> anyhow::Result<()> {
        // Registered before it exists and under the lock, so an interrupt-time cleanup running
        // on another thread cannot miss it.
        let mut resources = self.resources();
        resources.namespaces.push(netns.name().to_owned());
        ip(&["netns", "add", netns.name()])?;
        drop(resources);
        // IPv6 off: keeps captures free of neighbour-discovery noise; the mesh is IPv4 here.
        let _ = write_sysctl(netns, "net/ipv6/conf/all/disable_ipv6", "1");
        let _ = write_sysctl(netns, "net/ipv6/conf/default/disable_ipv6", "1");
        ip(&["-n", netns.name(), "link", "set", "lo", "up"]).map(drop)
    }

    fn resources(&self) -> MutexGuard<'_, Resources> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "ambit-testkit: tearing down network {} after a panic; logs kept in {}\n{}",
                self.prefix,
                self.log_dir.display(),
                self.process_logs(30)
            );
        }
        let errors = self.resources().cleanup();
        for e in &errors {
            eprintln!("ambit-testkit: cleanup of {}: {e}", self.prefix);
        }
        if !panicking && errors.is_empty() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

impl Pod {
    /// A listener on 0.0.0.0:`port` inside the pod (SO_REUSEADDR, backlog 1024), already
    /// non-blocking so `tokio::net::TcpListener::from_std` takes it as is; call
    /// `set_nonblocking(false)` to `accept()` on it from plain threads.
    pub fn tcp_listener(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        self.netns
            .try_run(|| -> std::io::Result<std::net::TcpListener> {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(1024)?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            })?
            .with_context(|| format!("cannot listen on {addr} in pod {} ({})", self.name, self.netns))
    }

    /// An echo server on 0.0.0.0:`port` inside the pod: a thread per connection writes back
    /// what it reads and half-closes at the end. Runs until the process exits.
    pub fn start_echo(&self, port: u16) -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        let listener = self.tcp_listener(port)?;
        listener.set_nonblocking(false)?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Ok(())
    }

    /// A blocking stream created and connected inside the pod (10 s connect timeout).
    pub fn tcp_connect(&self, addr: SocketAddr) -> anyhow::Result<std::net::TcpStream> {
        self.netns
            .try_run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)))?
            .with_context(|| format!("pod {} ({}) cannot connect to {addr}", self.name, self.ip))
    }

    /// Writes a sysctl inside the pod, e.g. `("net/ipv4/tcp_tw_reuse", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        write_sysctl(&self.netns, key, value)
    }
}

impl Node {
    /// Writes a sysctl inside the node, e.g. `("net/ipv4/tcp_tw_reuse", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        write_sysctl(&self.netns, key, value)
    }
}

/// Writes `/proc/sys/KEY` from a thread inside `netns` (`net/*` sysctls are per namespace).
pub fn write_sysctl(netns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    netns
        .try_run(|| std::fs::write(&path, value))?
        .with_context(|| format!("cannot set {} = {value} in netns {netns}", path.display()))
}

/// Keeps the characters that are safe in namespace and file names.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_names_safe() {
        assert_eq!(sanitize("echo/v1 x"), "echo-v1-x");
        assert_eq!(sanitize("node_1.a"), "node_1.a");
    }
}

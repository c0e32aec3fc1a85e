//! The benchmark cluster: two nodes, a client pod on node1 and a server pod on node2, the
//! servers (echo, iperf3), one ztunnel per node and optionally haproxy, plus switching between
//! the measured paths. Measuring is `load.rs`'s job.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ambit_testkit::{
    Netns, Network, Node, Pod, ProcessHandle,
    mesh::{MeshConfig, TestCa, WorkloadConfig, Ztunnel, ZtunnelFiles, find_ztunnel},
};
use anyhow::{Context as _, bail, ensure};

use crate::load::{self, Cpus};

/// Echo server port in the server pod (the ping-pong and connection-rate target).
pub const ECHO_PORT: u16 = 8080;
/// iperf3 server port in the server pod.
pub const IPERF_PORT: u16 = 5201;
/// haproxy's frontends on node1's bridge address, forwarding to the two ports above.
const HAPROXY_ECHO_PORT: u16 = 18080;
const HAPROXY_IPERF_PORT: u16 = 15201;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One way from the client to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum PathKind {
    /// Client pod → server pod over veths and the underlay, no proxy.
    Direct,
    /// Through haproxy in node1's namespace: one plain-TCP proxy hop (the reference).
    Haproxy,
    /// Captured into the client's ztunnel, HBONE mTLS to the server's ztunnel, then to the app.
    Ambit,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Haproxy => "haproxy (1 TCP hop)",
            PathKind::Ambit => "ambit",
        }
    }
}

/// Where a path sends echo and iperf3 traffic.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub echo: SocketAddr,
    pub iperf: SocketAddr,
}

pub struct Scenario {
    /// Held for its Drop: the namespaces and processes live as long as the scenario.
    _net: Network,
    pub client: Pod,
    pub server: Pod,
    pub ztunnels: Vec<Ztunnel>,
    /// The ztunnel binary, when the Ambit path is measured.
    pub ztunnel_binary: Option<PathBuf>,
    pub haproxy: Option<ProcessHandle>,
    node1: Node,
}

impl Scenario {
    /// Builds the cluster and starts everything `paths` need.
    pub fn build(paths: &[PathKind], ztunnel: Option<&Path>, cpus: Cpus) -> anyhow::Result<Scenario> {
        let mut net = Network::new("bench")?;
        let node1 = net.add_node("node1")?;
        let node2 = net.add_node("node2")?;
        let client = net.add_pod(&node1, "client")?;
        let server = net.add_pod(&node2, "server")?;
        for ns in [&client.netns, &server.netns, &node1.netns, &node2.netns] {
            tune(ns)?;
        }

        load::spawn_echo_server(&server, ECHO_PORT, cpus.server)?;
        let mut iperf = cpus.pinned(cpus.server, "iperf3");
        iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
        let iperf = net.spawn(&server.netns, iperf)?;
        wait_listening(&server.netns, IPERF_PORT, &iperf)?;

        let haproxy = if paths.contains(&PathKind::Haproxy) {
            Some(start_haproxy(&mut net, &node1, server.ip)?)
        } else {
            None
        };
        let (ztunnels, ztunnel_binary) = if paths.contains(&PathKind::Ambit) {
            let binary = find_ztunnel(ztunnel)?;
            let ztunnels = start_ztunnels(&mut net, [&node1, &node2], [&client, &server], &binary)?;
            (ztunnels, Some(binary))
        } else {
            (Vec::new(), None)
        };
        Ok(Scenario {
            _net: net,
            client,
            server,
            ztunnels,
            ztunnel_binary,
            haproxy,
            node1,
        })
    }

    /// Puts the pods' capture rules in the state `path` needs and returns where to connect.
    pub fn select(&self, path: PathKind) -> anyhow::Result<Targets> {
        let to_server = |port| SocketAddr::from((self.server.ip, port));
        let to_haproxy = |port| SocketAddr::from((self.node1.bridge_ip, port));
        if path == PathKind::Ambit {
            self.client.install_capture()?;
            self.server.install_capture()?;
        } else {
            self.client.remove_capture()?;
            self.server.remove_capture()?;
        }
        Ok(match path {
            PathKind::Direct | PathKind::Ambit => Targets {
                echo: to_server(ECHO_PORT),
                iperf: to_server(IPERF_PORT),
            },
            PathKind::Haproxy => Targets {
                echo: to_haproxy(HAPROXY_ECHO_PORT),
                iperf: to_haproxy(HAPROXY_IPERF_PORT),
            },
        })
    }

    /// The proxy processes of `path` (none for direct).
    pub fn proxy_pids(&self, path: PathKind) -> Vec<u32> {
        match path {
            PathKind::Direct => Vec::new(),
            PathKind::Haproxy => self.haproxy.iter().map(ProcessHandle::pid).collect(),
            PathKind::Ambit => self.ztunnels.iter().map(|z| z.process.pid()).collect(),
        }
    }

    /// Fails with the proxy's log if one of `path`'s proxies has exited.
    pub fn check_proxies(&self, path: PathKind) -> anyhow::Result<()> {
        let procs: Vec<&ProcessHandle> = match path {
            PathKind::Direct => Vec::new(),
            PathKind::Haproxy => self.haproxy.iter().collect(),
            PathKind::Ambit => self.ztunnels.iter().map(|z| &z.process).collect(),
        };
        for p in procs {
            if let Some(status) = p.try_wait()? {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    p.name(),
                    p.log_path().display(),
                    p.log_tail(30)
                );
            }
        }
        Ok(())
    }
}

/// Per-namespace TCP settings so tens of thousands of short connections do not run out of
/// ports or conntrack entries (all inside the bench's own namespaces).
fn tune(ns: &Netns) -> anyhow::Result<()> {
    ambit_testkit::write_sysctl(ns, "net/ipv4/tcp_tw_reuse", "1")?;
    ambit_testkit::write_sysctl(ns, "net/ipv4/ip_local_port_range", "20000 65535")?;
    // Absent when conntrack is not loaded; then there is nothing to tune.
    let _ = ambit_testkit::write_sysctl(ns, "net/netfilter/nf_conntrack_tcp_timeout_time_wait", "5");
    Ok(())
}

/// Waits until something listens on TCP `port` in `ns`.
fn wait_listening(ns: &Netns, port: u16, process: &ProcessHandle) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let filter = format!("sport = :{port}");
    loop {
        if !ns.exec(&["ss", "-Hltn", &filter])?.trim().is_empty() {
            return Ok(());
        }
        if let Some(status) = process.try_wait()? {
            bail!(
                "{} exited ({status}) before listening on {port}:\n{}",
                process.name(),
                process.log_tail(20)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "nothing listens on port {port} in netns {ns} after {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_haproxy(net: &mut Network, node1: &Node, server: Ipv4Addr) -> anyhow::Result<ProcessHandle> {
    let bind = node1.bridge_ip;
    let config = format!(
        "global\n    maxconn 4000\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
         listen echo\n    bind {bind}:{HAPROXY_ECHO_PORT}\n    server echo {server}:{ECHO_PORT}\n\
         listen iperf\n    bind {bind}:{HAPROXY_IPERF_PORT}\n    server iperf {server}:{IPERF_PORT}\n"
    );
    let path = net.log_dir().join("haproxy.cfg");
    std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(&path);
    let process = net.spawn(&node1.netns, cmd)?;
    wait_listening(&node1.netns, HAPROXY_ECHO_PORT, &process)?;
    Ok(process)
}

fn start_ztunnels(
    net: &mut Network,
    nodes: [&Node; 2],
    [client, server]: [&Pod; 2],
    binary: &Path,
) -> anyhow::Result<Vec<Ztunnel>> {
    let dir = net.log_dir().to_owned();
    let ca = TestCa::generate(&dir)?;
    let mut config = MeshConfig::new();
    config
        .workloads
        .push(WorkloadConfig::for_pod(client, "default", "client", "client"));
    config
        .workloads
        .push(WorkloadConfig::for_pod(server, "default", "server", "server"));
    let config_path = dir.join("ztunnel.yaml");
    config.write(&config_path)?;
    let files = ZtunnelFiles {
        binary: binary.to_owned(),
        config: config_path,
        ca,
    };
    let ztunnels = nodes
        .iter()
        .map(|node| net.spawn_ztunnel(node, &files, &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for z in &ztunnels {
        z.wait_ready(READY_TIMEOUT)?;
    }
    Ok(ztunnels)
}

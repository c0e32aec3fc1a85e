//! The demo's cluster: node1 with a `sleep` pod, node2 with an `echo` pod running a TCP echo
//! server, a fresh CA, the ztunnel config (rewritable while running) and one ztunnel per node.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ambit_testkit::{
    Network, Node, Pod,
    mesh::{
        MeshConfig, ServiceConfig, TestCa, WorkloadConfig, Ztunnel, ZtunnelFiles, deny_principals_policy, find_ztunnel,
    },
};
use anyhow::Context as _;

pub const NAMESPACE: &str = "default";
/// The echo server's port in its pod (the service's targetPort).
pub const ECHO_PORT: u16 = 8080;
/// The echo service's VIP and port.
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
/// The principal the DENY policy names.
pub const SLEEP_PRINCIPAL: &str = "cluster.local/ns/default/sa/sleep";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub net: Network,
    pub node1: Node,
    pub node2: Node,
    pub sleep: Pod,
    pub echo: Pod,
    pub ztunnels: Vec<Ztunnel>,
    pub config_path: PathBuf,
    config: MeshConfig,
}

impl Cluster {
    /// Builds the namespaces, starts the echo server, writes CA and config, starts both
    /// ztunnels and waits until they are ready. Prints each step.
    pub fn start(ztunnel: Option<&Path>) -> anyhow::Result<Cluster> {
        let binary = find_ztunnel(ztunnel)?;
        let mut net = Network::new("demo")?;
        let node1 = net.add_node("node1")?;
        let node2 = net.add_node("node2")?;
        for node in [&node1, &node2] {
            println!(
                "  node {:<6} netns {:<28} underlay {:<12} pods {}",
                node.name,
                node.netns.name(),
                node.underlay_ip,
                node.pod_cidr
            );
        }
        let sleep = net.add_pod(&node1, "sleep")?;
        let echo = net.add_pod(&node2, "echo")?;
        spawn_echo_server(&echo)?;
        for pod in [&sleep, &echo] {
            println!(
                "  pod  {:<6} netns {:<28} ip {:<12} on {}",
                pod.name,
                pod.netns.name(),
                pod.ip,
                pod.node
            );
        }
        println!("  echo server listening on {}:{ECHO_PORT} inside the echo pod", echo.ip);

        let dir = net.log_dir().to_owned();
        let ca = TestCa::generate(&dir)?;
        let mut config = MeshConfig::new();
        config
            .workloads
            .push(WorkloadConfig::for_pod(&sleep, NAMESPACE, "sleep", "sleep"));
        config
            .workloads
            .push(WorkloadConfig::for_pod(&echo, NAMESPACE, "echo", "echo"));
        config.services.push(ServiceConfig::for_app(
            "echo",
            NAMESPACE,
            SERVICE_VIP,
            SERVICE_PORT,
            ECHO_PORT,
            "echo",
        ));
        let config_path = dir.join("ztunnel.yaml");
        config.write(&config_path)?;
        println!("  CA and config written to {}", dir.display());

        for pod in [&sleep, &echo] {
            pod.install_capture()?;
        }
        println!("  capture rules (nft table inet ambit) installed in both pods");

        let files = ZtunnelFiles {
            binary,
            config: config_path.clone(),
            ca,
        };
        let mut ztunnels = Vec::new();
        for node in [&node1, &node2] {
            ztunnels.push(net.spawn_ztunnel(node, &files, &[])?);
        }
        for z in &ztunnels {
            z.wait_ready(READY_TIMEOUT)?;
            println!(
                "  ztunnel on {} ready (pid {}, log {})",
                z.node.name,
                z.process.pid(),
                z.process.log_path().display()
            );
        }
        Ok(Cluster {
            net,
            node1,
            node2,
            sleep,
            echo,
            ztunnels,
            config_path,
            config,
        })
    }

    /// Adds (or removes) the DENY policy for the sleep principal and rewrites the config file.
    pub fn set_deny_sleep(&mut self, deny: bool) -> anyhow::Result<()> {
        self.config.authorization_policies.clear();
        if deny {
            let policy = deny_principals_policy("deny-sleep", NAMESPACE, &[SLEEP_PRINCIPAL])?;
            self.config.authorization_policies.push(policy);
        }
        self.config.write(&self.config_path)
    }

    /// The ztunnel on `node`.
    pub fn ztunnel(&self, node: &Node) -> anyhow::Result<&Ztunnel> {
        self.ztunnels
            .iter()
            .find(|z| z.node.name == node.name)
            .with_context(|| format!("no ztunnel on {}", node.name))
    }

    /// Log tails of every process, for failure reports.
    pub fn logs(&self) -> String {
        self.net.process_logs(20)
    }

    pub fn echo_addr(&self) -> SocketAddr {
        SocketAddr::from((self.echo.ip, ECHO_PORT))
    }

    pub fn service_addr(&self) -> SocketAddr {
        SocketAddr::from((SERVICE_VIP, SERVICE_PORT))
    }
}

/// A thread-per-connection TCP echo server on [`ECHO_PORT`] inside `pod`.
fn spawn_echo_server(pod: &Pod) -> anyhow::Result<()> {
    let listener = pod.tcp_listener(ECHO_PORT)?;
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        })
        .context("cannot start the echo server thread")?;
    Ok(())
}

//! A two-node mesh for ztunnel's network-namespace tests: node1 runs `client` (meshed, captured)
//! and `outsider` (not meshed, not captured); node2 runs `server` (meshed, captured) with an
//! echo server on 8080 behind the service VIP 10.96.0.10:80. One real ztunnel per node.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use ambit_testkit::{
    Network, Node, Pod,
    mesh::{MeshConfig, ServiceConfig, TestCa, WorkloadConfig, Ztunnel, ZtunnelFiles},
    pcap_contains, pcap_tls_records,
};
use anyhow::Context as _;

pub const ECHO_PORT: u16 = 8080;
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub struct Mesh {
    pub net: Network,
    pub node1: Node,
    pub client: Pod,
    pub server: Pod,
    pub outsider: Pod,
    pub config: MeshConfig,
    pub files: ZtunnelFiles,
    pub z1: Ztunnel,
    pub z2: Ztunnel,
}

/// The network every netns mesh starts from: `client` on node1 and `server` on node2, both with
/// the capture rules installed, and an echo server on `server`'s [`ECHO_PORT`].
pub struct TwoNodes {
    pub net: Network,
    pub node1: Node,
    pub node2: Node,
    pub client: Pod,
    pub server: Pod,
}

impl TwoNodes {
    pub fn start(name: &str) -> anyhow::Result<TwoNodes> {
        let mut net = Network::new(name)?;
        let node1 = net.add_node("node1")?;
        let node2 = net.add_node("node2")?;
        let client = net.add_pod(&node1, "client")?;
        let server = net.add_pod(&node2, "server")?;
        client.install_capture()?;
        server.install_capture()?;
        start_echo(&server, ECHO_PORT)?;
        Ok(TwoNodes {
            net,
            node1,
            node2,
            client,
            server,
        })
    }
}

impl Mesh {
    pub fn start(name: &str) -> anyhow::Result<Mesh> {
        let TwoNodes {
            mut net,
            node1,
            node2,
            client,
            server,
        } = TwoNodes::start(name)?;
        // Pod addresses are per node, so adding this one last does not move the others.
        let outsider = net.add_pod(&node1, "outsider")?;

        let dir = net.log_dir().to_owned();
        let ca = TestCa::generate(&dir)?;
        let mut config = MeshConfig::new();
        config
            .workloads
            .push(WorkloadConfig::for_pod(&client, "default", "sleep", "sleep"));
        config
            .workloads
            .push(WorkloadConfig::for_pod(&server, "default", "echo", "echo"));
        config
            .services
            .push(ServiceConfig::for_app("echo", "default", VIP, 80, ECHO_PORT, "echo"));
        let files = ZtunnelFiles {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_ztunnel")),
            config: dir.join("ztunnel.yaml"),
            ca,
        };
        config.write(&files.config)?;
        let z1 = net.spawn_ztunnel(&node1, &files, &["--config-poll", "100ms", "--drain-timeout", "1s"])?;
        let z2 = net.spawn_ztunnel(&node2, &files, &["--config-poll", "100ms", "--drain-timeout", "1s"])?;
        z1.wait_ready(Duration::from_secs(10))?;
        z2.wait_ready(Duration::from_secs(10))?;
        Ok(Mesh {
            net,
            node1,
            client,
            server,
            outsider,
            config,
            files,
            z1,
            z2,
        })
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, ECHO_PORT))
    }

    /// Rewrites the config file and waits until both ztunnels report the reload.
    pub fn apply(&mut self, edit: impl FnOnce(&mut MeshConfig)) -> anyhow::Result<()> {
        let before = [reloads(&self.z1, "ok")?, reloads(&self.z2, "ok")?];
        edit(&mut self.config);
        self.config.write(&self.files.config)?;
        wait_until(Duration::from_secs(10), || {
            Ok(reloads(&self.z1, "ok")? > before[0] && reloads(&self.z2, "ok")? > before[1])
        })
        .context("ztunnels did not reload the config")
    }
}

fn reloads(z: &Ztunnel, result: &str) -> anyhow::Result<f64> {
    Ok(metric(
        &z.metrics()?,
        "ambit_config_reloads_total",
        &[("result", result)],
    ))
}

/// An echo server on `port` inside `pod` (see [`Pod::start_echo`]).
pub fn start_echo(pod: &Pod, port: u16) -> anyhow::Result<()> {
    pod.start_echo(port)
}

/// Sends `payload` and half-closes while reading everything back on another thread.
pub fn echo_roundtrip(mut stream: TcpStream, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = stream.try_clone()?;
    let handle = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    });
    stream.write_all(payload)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        .context("read echo")
}

/// Echoes `data` over `stream` and asserts all of it came back; `what` names the path.
pub fn assert_echoed(stream: TcpStream, data: &[u8], what: &str) -> anyhow::Result<()> {
    let echoed = echo_roundtrip(stream, data)?;
    assert!(
        echoed == data,
        "{what}: echoed {} of {} bytes",
        echoed.len(),
        data.len()
    );
    Ok(())
}

/// Asserts a capture between the nodes never shows `marker` (application bytes) and does show
/// TLS records.
pub fn assert_only_tls_on_the_wire(pcap: &[u8], marker: &[u8]) {
    assert!(
        !pcap_contains(pcap, marker),
        "application bytes visible on the wire between the nodes"
    );
    let records = pcap_tls_records(pcap);
    assert!(records > 100, "expected TLS records on the wire, saw {records}");
}

/// Whether a connection through the mesh is refused or cut before any byte comes back.
pub fn echo_fails(pod: &Pod, addr: SocketAddr) -> bool {
    match pod.tcp_connect(addr) {
        Err(_) => true,
        Ok(stream) => echo_roundtrip(stream, b"ping")
            .map(|got| got.is_empty())
            .unwrap_or(true),
    }
}

/// Sum of a Prometheus metric's samples whose labels include every `(name, value)` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = check();
        if let Ok(true) = last {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return match last {
                Err(e) => Err(e.context("condition not met in time")),
                _ => Err(anyhow::anyhow!("condition not met within {timeout:?}")),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic, non-repeating bytes with a marker every 4 KiB (what a capture must not show).
pub fn payload(len: usize, marker: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x1234_5678;
    while out.len() < len {
        if out.len() % 4096 == 0 {
            out.extend_from_slice(marker);
        } else {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(x as u8);
        }
    }
    out.truncate(len);
    out
}

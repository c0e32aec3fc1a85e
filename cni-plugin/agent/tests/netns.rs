//! Traffic capture with the real CNI chain, as root: two "nodes" (network namespaces), each
//! with Debian's `bridge` + `host-local` plugins in its conflist, the real `ambit-cni-agent`
//! (which adds `ambit-cni` to that conflist), a real ztunnel in in-pod mode and, on node1, the
//! real operator reading a manifest directory. Pods are empty namespaces the chain wires,
//! invoked as a container runtime would (env vars, config on stdin, `prevResult` passed along).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ambit_testkit::{
    Netns, Network, Node, Pod,
    cni::{self, Sandbox},
    cni_agent::{self, CniAgent},
    mesh::{self, Operator, OperatorFiles, XdsZtunnelFiles, Ztunnel},
    pcap_contains,
};
use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const MESH_NS: &str = "shop";
const PLAIN_NS: &str = "plain";
const ECHO_PORT: u16 = 8080;

/// A pod the chain wired: its sandbox, the chain's result and the pod view tests talk through.
struct CniPod {
    sandbox: Sandbox,
    result: Value,
    pod: Pod,
}

struct CniMesh {
    net: Network,
    nodes: [Node; 2],
    agents: [CniAgent; 2],
    ztunnels: [Ztunnel; 2],
    ztunnel_files: [XdsZtunnelFiles; 2],
    _operator: Operator,
    manifests: PathBuf,
    /// Each node's conflist as written before the agent added itself.
    original_conflists: [(PathBuf, String); 2],
}

fn namespace_manifest(name: &str, enrolled: bool) -> String {
    let labels = if enrolled {
        "\n  labels:\n    ambit.dev/dataplane-mode: ambient"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
}

fn pod_manifest(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)], ip: Option<IpAddr>) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: uid-{namespace}-{name}\n  labels:\n    app: {name}\n"
    );
    for (k, v) in labels {
        text.push_str(&format!("    {k}: {v}\n"));
    }
    text.push_str(&format!(
        "spec:\n  nodeName: {node}\n  serviceAccountName: {name}\n  containers:\n    - name: app\n      image: example.invalid/{name}\n"
    ));
    if let Some(ip) = ip {
        text.push_str(&format!(
            "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n    - ip: {ip}\n"
        ));
    }
    text
}

/// The two per-node values of `v`.
fn pair<T>(v: Vec<T>) -> anyhow::Result<[T; 2]> {
    v.try_into().map_err(|_| anyhow::anyhow!("expected one per node"))
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last {
        Some(e) => Err(e.context(format!("timed out waiting until {what}"))),
        None => bail!("timed out after {timeout:?} waiting until {what}"),
    }
}

impl CniMesh {
    fn start(name: &str) -> anyhow::Result<CniMesh> {
        Self::start_with(name, &[])
    }

    /// Everything up, with `agent_args` added to both agents' command lines.
    fn start_with(name: &str, agent_args: &[&str]) -> anyhow::Result<CniMesh> {
        let mut net = Network::new(name)?;
        let node1 = net.add_node("node1")?;
        let node2 = net.add_node("node2")?;
        let dir = net.log_dir().to_owned();
        let operator_files = OperatorFiles::local(&dir, &[&node1, &node2])?;
        let manifests = operator_files.manifests.clone();
        mesh::write_file(&manifests.join("00-shop.yaml"), &namespace_manifest(MESH_NS, true))?;
        mesh::write_file(&manifests.join("00-plain.yaml"), &namespace_manifest(PLAIN_NS, false))?;

        let operator = net.spawn_operator(&node1, &operator_files, &["--manifest-poll", "100ms"])?;
        operator.wait_ready(Duration::from_secs(30))?;

        let (agent_binary, plugin) = (cni_agent::find_cni_agent(None)?, cni_agent::find_cni_plugin(None)?);
        let mut agents = Vec::new();
        let mut originals = Vec::new();
        for node in [&node1, &node2] {
            let conf_dir = CniAgent::conf_dir_for(&dir, node);
            std::fs::create_dir_all(&conf_dir)?;
            // host-local hands out .100-.200, clear of the addresses testkit's own pods use.
            let o = node.index;
            let conflist = cni::bridge_conflist(
                &node.pod_cidr.to_string(),
                &node.bridge_ip.to_string(),
                &format!("10.244.{o}.100"),
                &format!("10.244.{o}.200"),
                &dir.join(format!("ipam-{}", node.name)),
            );
            let text = serde_json::to_string_pretty(&conflist)?;
            let path = conf_dir.join("10-bridge.conflist");
            mesh::write_file(&path, &text)?;
            originals.push((path, text));
            agents.push(net.spawn_cni_agent(node, &agent_binary, &plugin, &manifests, &dir, agent_args)?);
        }
        for agent in &agents {
            agent.wait_ready(Duration::from_secs(20))?;
        }
        let mut ztunnels = Vec::new();
        let mut files = Vec::new();
        for (node, agent) in [&node1, &node2].into_iter().zip(&agents) {
            let f = XdsZtunnelFiles {
                binary: mesh::find_ztunnel(None)?,
                xds_address: operator.xds_address(),
                token_file: dir.join(format!("{}.token", node.name)),
                root_cert: operator.root_cert.clone(),
                zds_socket: agent.zds_socket.clone(),
            };
            ztunnels.push(net.spawn_xds_ztunnel(node, &f, &["--drain-timeout", "1s"])?);
            files.push(f);
        }
        for z in &ztunnels {
            z.wait_ready(Duration::from_secs(20))?;
        }
        Ok(CniMesh {
            net,
            nodes: [node1, node2],
            agents: pair(agents)?,
            ztunnels: pair(ztunnels)?,
            ztunnel_files: pair(files)?,
            _operator: operator,
            manifests,
            original_conflists: pair(originals)?,
        })
    }

    fn sandbox(&mut self, node: usize, namespace: &str, name: &str) -> anyhow::Result<Sandbox> {
        let netns = self
            .net
            .add_sandbox(&self.nodes[node], &format!("{namespace}-{name}"))?;
        Ok(Sandbox {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{namespace}-{name}"),
            container_id: format!("ctr-{namespace}-{name}-{}", std::process::id()),
            netns: Some(netns.path()),
            interface: "eth0".into(),
        })
    }

    /// The runtime's job for a new pod: the Pod object exists first (as in Kubernetes), then the
    /// chain's ADD; the kubelet then reports the address the chain gave it.
    fn create_pod(
        &mut self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<CniPod> {
        let sandbox = self.sandbox(node, namespace, name)?;
        let file = self.manifests.join(format!("20-{namespace}-{name}.yaml"));
        let node_name = self.nodes[node].name.clone();
        mesh::write_file(&file, &pod_manifest(namespace, name, &node_name, labels, None))?;
        let result = self.agents[node].runtime().add(&sandbox)?;
        self.finish_pod(node, sandbox, result, labels)
    }

    fn finish_pod(
        &mut self,
        node: usize,
        sandbox: Sandbox,
        result: Value,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<CniPod> {
        let address = result["ips"][0]["address"]
            .as_str()
            .with_context(|| format!("no address in the chain's result {result}"))?;
        let ip: Ipv4Addr = address.split('/').next().unwrap_or_default().parse()?;
        let node_name = self.nodes[node].name.clone();
        let file = self
            .manifests
            .join(format!("20-{}-{}.yaml", sandbox.namespace, sandbox.name));
        mesh::write_file(
            &file,
            &pod_manifest(
                &sandbox.namespace,
                &sandbox.name,
                &node_name,
                labels,
                Some(IpAddr::V4(ip)),
            ),
        )?;
        let netns_name = sandbox
            .netns
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pod = Pod {
            netns: Netns::from_name(netns_name),
            name: sandbox.name.clone(),
            ip,
            node: node_name,
        };
        pod.start_echo(ECHO_PORT)?;
        Ok(CniPod { sandbox, result, pod })
    }

    /// Waits until every ztunnel knows `pod`'s address from the operator.
    fn wait_known(&self, pod: &CniPod) -> anyhow::Result<()> {
        let ip = format!("\"{}\"", pod.pod.ip);
        for z in &self.ztunnels {
            wait_until(Duration::from_secs(10), "ztunnel learns the pod's address", || {
                Ok(z.config_dump()?.contains(&ip))
            })?;
        }
        Ok(())
    }
}

/// Sends `data` from inside `from` to `to`:8080 and returns what came back.
fn echo(from: &Pod, to: Ipv4Addr, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream: TcpStream = from.tcp_connect(SocketAddr::from((to, ECHO_PORT)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(data)?;
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).context("read echo")?;
    Ok(back)
}

/// `ambit-cni-agent --uninstall` on node `index`, as an operator would run it.
fn uninstall(mesh: &CniMesh, index: usize) -> anyhow::Result<()> {
    let agent = &mesh.agents[index];
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", mesh.nodes[index].netns.name()])
        .arg(cni_agent::find_cni_agent(None)?)
        .args(["--uninstall", "--node", &mesh.nodes[index].name, "--manifests"])
        .arg(&mesh.manifests)
        .arg("--state-dir")
        .arg(&agent.state_dir)
        .arg("--cni-conf-dir")
        .arg(&agent.conf_dir)
        .arg("--cni-bin-dir")
        .arg(&agent.bin_dir)
        .arg("--plugin-binary")
        .arg(cni_agent::find_cni_plugin(None)?)
        .status()?;
    ensure!(status.success(), "uninstall failed: {status}");
    Ok(())
}

fn ruleset(netns: &Netns) -> anyhow::Result<String> {
    netns.exec(&["nft", "list", "ruleset"])
}

fn captured(z: &Ztunnel, key: &str) -> anyhow::Result<bool> {
    let dump: Value = serde_json::from_str(&z.config_dump()?)?;
    Ok(dump["capturedPods"]
        .as_array()
        .is_some_and(|pods| pods.iter().any(|p| p["workload"] == key)))
}

/// Waits until `z` has counted a connection, as `reporter`, from service account `shop/<sa>`.
fn wait_counted(z: &Ztunnel, reporter: &str, sa: &str) -> anyhow::Result<()> {
    let principal = format!("spiffe://cluster.local/ns/{MESH_NS}/sa/{sa}");
    let labels = [("reporter", reporter), ("source_principal", principal.as_str())];
    wait_until(Duration::from_secs(5), "ztunnel counts the connection", || {
        Ok(metric(&z.metrics()?, "istio_tcp_connections_opened_total", &labels) >= 1.0)
    })
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_real_chain_enrolls_labelled_pods_into_ztunnel_and_leaves_others_alone() -> anyhow::Result<()> {
    let mut mesh = CniMesh::start("cnichain")?;
    let conflist: Value = serde_json::from_str(&std::fs::read_to_string(&mesh.original_conflists[0].0)?)?;
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .context("plugins")?
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["bridge", "ambit-cni"], "the agent appends itself to the chain");

    let client = mesh.create_pod(0, MESH_NS, "client", &[])?;
    let server = mesh.create_pod(1, MESH_NS, "server", &[])?;
    let optout = mesh.create_pod(0, MESH_NS, "optout", &[("ambit.dev/dataplane-mode", "none")])?;
    let outsider = mesh.create_pod(0, PLAIN_NS, "outsider", &[])?;
    mesh.wait_known(&client)?;
    mesh.wait_known(&server)?;

    // Pods got addresses from host-local and the chain's result went through ambit-cni intact.
    assert_eq!(client.result["cniVersion"], "1.0.0");
    assert!(client.result["interfaces"].as_array().is_some_and(|i| !i.is_empty()));
    assert!(captured(&mesh.ztunnels[0], "shop/client")?);
    assert!(captured(&mesh.ztunnels[1], "shop/server")?);
    assert!(ruleset(&client.pod.netns)?.contains("table inet ambit"));
    for pod in [&optout, &outsider] {
        let rules = ruleset(&pod.pod.netns)?;
        assert!(
            !rules.contains("ambit"),
            "{} must be left alone:\n{rules}",
            pod.pod.name
        );
        assert!(!captured(
            &mesh.ztunnels[0],
            &format!("{}/{}", pod.sandbox.namespace, pod.pod.name)
        )?);
    }

    // Enrolled traffic goes through both ztunnels over mTLS; the wire between nodes shows only TLS.
    let capture = mesh.nodes[1].capture("eth0")?;
    let marker = b"CNI-CHAIN-PLAINTEXT-MARKER";
    let data: Vec<u8> = marker.iter().copied().cycle().take(256 << 10).collect();
    assert!(echo(&client.pod, server.pod.ip, &data)? == data, "client → server");
    let pcap = capture.stop()?;
    assert!(
        !pcap_contains(&pcap, marker),
        "application bytes seen on the wire between nodes"
    );
    wait_counted(&mesh.ztunnels[1], "destination", "client")?;

    // CHECK passes, and names the capture rules once they are gone.
    let runtime = mesh.agents[0].runtime();
    runtime.check_plugin("ambit-cni", &client.sandbox, &client.result)?;
    client.pod.netns.exec(&["nft", "delete", "table", "inet", "ambit"])?;
    let broken = runtime
        .check_plugin("ambit-cni", &client.sandbox, &client.result)
        .expect_err("CHECK without rules");
    assert!(
        format!("{broken:#}").contains("capture rules of pod shop/client are missing"),
        "{broken:#}"
    );
    ambit_capture::install(ambit_capture::Backend::Nftables, &client.pod.netns.path())?;

    // The agent's socket answers garbage with an error naming the problem, and keeps serving.
    let mut raw = std::os::unix::net::UnixStream::connect(&mesh.agents[0].socket)?;
    raw.write_all(b"{\"command\": \"ADD\", \"podName\": 7}\n")?;
    let mut reply = String::new();
    raw.read_to_string(&mut reply)?;
    assert!(
        reply.contains("\"code\":6") && reply.contains("cannot decode"),
        "{reply}"
    );

    // Untouched pods talk directly: neither ztunnel sees them.
    assert_eq!(echo(&outsider.pod, optout.pod.ip, b"direct")?, b"direct");
    let z1 = mesh.ztunnels[0].metrics()?;
    assert_eq!(
        metric(
            &z1,
            "istio_tcp_connections_opened_total",
            &[("source_workload", "outsider")]
        ),
        0.0
    );

    // A kubelet-style probe from the node reaches the enrolled app directly (the agent SNATs
    // node-local traffic to the probe address, which the pod's rules exempt).
    let node2 = mesh.nodes[1].netns.clone();
    let probe = node2
        .try_run(|| TcpStream::connect_timeout(&SocketAddr::from((server.pod.ip, ECHO_PORT)), Duration::from_secs(5)))?
        .context("probe from node2")?;
    drop(probe);

    // Un-enrolling the namespace takes every rule out of its pods; enrolling again puts them back.
    mesh::write_file(
        &mesh.manifests.join("00-shop.yaml"),
        &namespace_manifest(MESH_NS, false),
    )?;
    wait_until(Duration::from_secs(10), "the server's rules are removed", || {
        Ok(!ruleset(&server.pod.netns)?.contains("ambit") && !captured(&mesh.ztunnels[1], "shop/server")?)
    })?;
    assert_eq!(echo(&client.pod, server.pod.ip, b"plain now")?, b"plain now");
    mesh::write_file(&mesh.manifests.join("00-shop.yaml"), &namespace_manifest(MESH_NS, true))?;
    wait_until(Duration::from_secs(10), "the server is captured again", || {
        Ok(ruleset(&server.pod.netns)?.contains("table inet ambit") && captured(&mesh.ztunnels[1], "shop/server")?)
    })?;

    // DEL twice is fine; the pod's rules and its capture are gone after the first.
    runtime.del(&client.sandbox, Some(&client.result))?;
    runtime.del(&client.sandbox, Some(&client.result))?;
    assert!(!ruleset(&client.pod.netns)?.contains("ambit"));
    wait_until(Duration::from_secs(5), "node1's ztunnel releases the client", || {
        Ok(!captured(&mesh.ztunnels[0], "shop/client")?)
    })?;
    // ...also once the namespace itself is gone.
    let mut gone = client.sandbox.clone();
    gone.netns = None;
    runtime.del(&gone, None)?;

    // Uninstalling puts the conflist back byte for byte and leaves nothing of ours behind.
    let agent = &mesh.agents[1];
    agent.process.stop(Duration::from_secs(5))?;
    uninstall(&mesh, 1)?;
    let (path, original) = &mesh.original_conflists[1];
    assert_eq!(&std::fs::read_to_string(path)?, original, "conflist restored");
    assert!(!agent.bin_dir.join("ambit-cni").exists());
    assert!(!ruleset(&server.pod.netns)?.contains("ambit"));
    assert!(!ruleset(&mesh.nodes[1].netns)?.contains("ambit"));
    Ok(())
}

#[test]
fn restarts_recover_every_pod_and_adds_fail_closed_while_ztunnel_is_down() -> anyhow::Result<()> {
    let mut mesh = CniMesh::start("cnirestart")?;
    let client = mesh.create_pod(0, MESH_NS, "client", &[])?;
    let server = mesh.create_pod(1, MESH_NS, "server", &[])?;
    mesh.wait_known(&client)?;
    mesh.wait_known(&server)?;
    assert_eq!(echo(&client.pod, server.pod.ip, b"one")?, b"one");

    // Agent restart: pods keep flowing meanwhile; the new agent knows them from its records.
    mesh.agents[0].process.stop(Duration::from_secs(5))?;
    assert_eq!(echo(&client.pod, server.pod.ip, b"agent down")?, b"agent down");
    let sandbox = mesh.sandbox(0, MESH_NS, "early")?;
    mesh::write_file(
        &mesh.manifests.join("20-shop-early.yaml"),
        &pod_manifest(MESH_NS, "early", "node1", &[], None),
    )?;
    let refused = mesh.agents[0]
        .runtime()
        .add(&sandbox)
        .expect_err("ADD with the agent down");
    assert!(format!("{refused:#}").contains("code Some(11)"), "{refused:#}");
    // The runtime tears a failed ADD down (DEL succeeds with the agent away) before retrying.
    mesh.agents[0].runtime().del(&sandbox, None)?;
    let agent = mesh.net.restart_cni_agent(&mesh.agents[0])?;
    agent.wait_ready(Duration::from_secs(20))?;
    mesh.agents[0] = agent;
    let result = mesh.agents[0].runtime().add(&sandbox)?;
    let early = mesh.finish_pod(0, sandbox, result, &[])?;
    mesh.wait_known(&early)?;
    assert_eq!(echo(&early.pod, server.pod.ip, b"early")?, b"early");
    assert!(mesh.agents[0].metrics()?.contains("ambit_cni_agent_enrolled_pods 2"));

    // ztunnel down: captured traffic stops (no plaintext bypass) and a new enrolled pod's ADD
    // fails; after the restart the agent's snapshot brings every pod back and the retry works.
    mesh.ztunnels[0].process.stop(Duration::from_secs(5))?;
    let err = echo(&client.pod, server.pod.ip, b"leak?").expect_err("traffic with ztunnel down");
    let _ = err;
    let sandbox = mesh.sandbox(0, MESH_NS, "late")?;
    mesh::write_file(
        &mesh.manifests.join("20-shop-late.yaml"),
        &pod_manifest(MESH_NS, "late", "node1", &[], None),
    )?;
    let refused = mesh.agents[0]
        .runtime()
        .add(&sandbox)
        .expect_err("ADD with ztunnel down");
    assert!(
        format!("{refused:#}").contains("no ztunnel is connected"),
        "{refused:#}"
    );
    // The runtime cleans up a failed ADD before retrying.
    mesh.agents[0].runtime().del(&sandbox, None)?;
    let files = mesh.ztunnel_files[0].clone();
    let node = mesh.nodes[0].clone();
    mesh.ztunnels[0] = mesh.net.spawn_xds_ztunnel(&node, &files, &["--drain-timeout", "1s"])?;
    mesh.ztunnels[0].wait_ready(Duration::from_secs(20))?;
    wait_until(
        Duration::from_secs(10),
        "the restarted ztunnel gets the snapshot",
        || Ok(captured(&mesh.ztunnels[0], "shop/client")? && captured(&mesh.ztunnels[0], "shop/early")?),
    )?;
    assert_eq!(echo(&client.pod, server.pod.ip, b"back")?, b"back");
    let result = mesh.agents[0].runtime().add(&sandbox)?;
    let late = mesh.finish_pod(0, sandbox, result, &[])?;
    mesh.wait_known(&late)?;
    assert_eq!(echo(&late.pod, server.pod.ip, b"late")?, b"late");

    // Hand-over: a second ztunnel connects (other admin ports), gets the snapshot and opens the
    // same pod listeners beside the first (SO_REUSEPORT); the first drains away and traffic
    // carries on through the second.
    let files = &mesh.ztunnel_files[0];
    let mut cmd = std::process::Command::new(&files.binary);
    cmd.args(["--xds-address", &files.xds_address])
        .arg("--token-file")
        .arg(&files.token_file)
        .arg("--root-cert")
        .arg(&files.root_cert)
        .args(["--operator-server-name", mesh::OPERATOR_SERVER_NAME])
        .arg("--zds-socket")
        .arg(&files.zds_socket)
        .args(["--node", "node1", "--drain-timeout", "1s"])
        .args(["--admin-addr", "127.0.0.1:16000", "--metrics-addr", "0.0.0.0:16020"])
        .args(["--readiness-addr", "0.0.0.0:16021"]);
    let node = mesh.nodes[0].clone();
    let second = mesh.net.spawn(&node.netns, cmd)?;
    let second_admin = SocketAddr::from((Ipv4Addr::LOCALHOST, 16000));
    wait_until(Duration::from_secs(10), "the second ztunnel has every pod", || {
        let (_, dump) = ambit_testkit::http_get(&node.netns, second_admin, "/config_dump")?;
        Ok(["shop/client", "shop/early", "shop/late"]
            .iter()
            .all(|key| dump.contains(&format!("\"workload\": \"{key}\""))))
    })?;
    mesh.ztunnels[0].process.stop(Duration::from_secs(10))?;
    for round in 0..5 {
        let msg = format!("handed over {round}");
        assert_eq!(echo(&client.pod, server.pod.ip, msg.as_bytes())?, msg.as_bytes());
    }
    let (_, metrics) =
        ambit_testkit::http_get(&node.netns, SocketAddr::from((Ipv4Addr::LOCALHOST, 16020)), "/metrics")?;
    let from_client = [
        ("reporter", "source"),
        ("source_principal", "spiffe://cluster.local/ns/shop/sa/client"),
    ];
    assert!(
        metric(&metrics, "istio_tcp_connections_opened_total", &from_client) >= 5.0,
        "{metrics}"
    );
    assert!(second.is_running());
    Ok(())
}

#[test]
fn pods_running_before_the_agent_are_found_and_enrolled() -> anyhow::Result<()> {
    let mut mesh = CniMesh::start("cnibefore")?;
    let server = mesh.create_pod(1, MESH_NS, "server", &[])?;
    // Ambit off node1: its conflist is back to the bridge alone, and a pod starts there.
    mesh.agents[0].process.stop(Duration::from_secs(5))?;
    uninstall(&mesh, 0)?;
    let before = mesh.create_pod(0, MESH_NS, "before", &[])?;
    assert!(!ruleset(&before.pod.netns)?.contains("ambit"), "started without Ambit");
    mesh.wait_known(&server)?;
    mesh.wait_known(&before)?;

    // The agent comes (back): it finds the running pod's namespace by address and enrolls it.
    let agent = mesh.net.restart_cni_agent(&mesh.agents[0])?;
    agent.wait_ready(Duration::from_secs(20))?;
    mesh.agents[0] = agent;
    wait_until(Duration::from_secs(10), "the running pod is captured", || {
        Ok(ruleset(&before.pod.netns)?.contains("table inet ambit") && captured(&mesh.ztunnels[0], "shop/before")?)
    })?;
    assert_eq!(echo(&before.pod, server.pod.ip, b"found")?, b"found");
    wait_counted(&mesh.ztunnels[0], "source", "before")?;
    // Its runtime's DEL (with the sandbox id the agent never saw) still releases it.
    mesh.agents[0].runtime().del(&before.sandbox, Some(&before.result))?;
    assert!(!ruleset(&before.pod.netns)?.contains("ambit"));
    Ok(())
}

#[test]
fn the_iptables_backend_captures_and_releases_pods_too() -> anyhow::Result<()> {
    let mut mesh = CniMesh::start_with("cniipt", &["--redirect", "iptables"])?;
    let client = mesh.create_pod(0, MESH_NS, "client", &[])?;
    let server = mesh.create_pod(1, MESH_NS, "server", &[])?;
    mesh.wait_known(&client)?;
    mesh.wait_known(&server)?;
    let rules = client.pod.netns.exec(&["iptables-save", "-t", "nat"])?;
    assert!(rules.contains("-A OUTPUT -j AMBIT_OUTPUT"), "{rules}");
    assert!(
        !ruleset(&client.pod.netns)?.contains("table inet ambit"),
        "no nftables table with iptables"
    );
    assert_eq!(echo(&client.pod, server.pod.ip, b"via iptables")?, b"via iptables");
    wait_counted(&mesh.ztunnels[1], "destination", "client")?;
    mesh.agents[0].runtime().del(&client.sandbox, Some(&client.result))?;
    let rules = client.pod.netns.exec(&["iptables-save", "-t", "nat"])?;
    assert!(!rules.contains("AMBIT"), "{rules}");
    Ok(())
}

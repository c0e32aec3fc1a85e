//! ztunnel in operator mode, as root, with real processes: `ambit-operator` runs in node1's
//! namespace on its underlay address (172.30.0.1) and serves workload xDS and certificates from a
//! directory of Kubernetes manifests; one ztunnel per node gets everything from it. Pods are
//! described only as Kubernetes objects; each node's real `ambit-cni-agent` hands them to its
//! ztunnel over ZDS when the real `ambit-cni` plugin reports them (the pods' interfaces are
//! wired by the test harness, so the plugin runs as if chained after them).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use ambit_testkit::{
    Network, Node, Pod,
    cni_agent::{self, CniAgent},
    mesh::{self, Operator, OperatorFiles, XdsZtunnelFiles, Ztunnel},
};
use anyhow::Context as _;

use crate::harness::{
    ECHO_PORT, TwoNodes, VIP, assert_echoed, assert_only_tls_on_the_wire, echo_fails, echo_roundtrip, metric, payload,
    start_echo, wait_until,
};

const NAMESPACE: &str = "default";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

/// node1: operator, ztunnel, `client` (sa `sleep`, app `sleep`); node2: ztunnel, `server`
/// (sa `echo`, app `echo`, behind Service `echo` = 10.96.0.10:80). Both pods run an echo server
/// on 8080, so traffic can be opened either way.
struct OperatorMesh {
    net: Network,
    node1: Node,
    node2: Node,
    client: Pod,
    server: Pod,
    operator: Operator,
    z1: Ztunnel,
    z2: Ztunnel,
    manifests: PathBuf,
    agent2: CniAgent,
}

impl OperatorMesh {
    /// Everything up and ready; `cert_ttl` goes to the operator (`--cert-ttl`, `--max-cert-ttl`)
    /// and to both ztunnels (`--cert-ttl`).
    fn start(name: &str, cert_ttl: &str) -> anyhow::Result<OperatorMesh> {
        let TwoNodes {
            mut net,
            node1,
            node2,
            client,
            server,
        } = TwoNodes::start(name)?;
        start_echo(&client, ECHO_PORT)?;

        let dir = net.log_dir().to_owned();
        let operator_files = OperatorFiles::local(&dir, &[&node1, &node2])?;
        let manifests = operator_files.manifests.clone();

        mesh::write_file(&manifests.join("00-namespace.yaml"), &namespace_manifest(NAMESPACE))?;
        mesh::write_file(
            &manifests.join("10-client.yaml"),
            &pod_manifest(&client, NAMESPACE, "sleep", "sleep"),
        )?;
        mesh::write_file(
            &manifests.join("10-server.yaml"),
            &pod_manifest(&server, NAMESPACE, "echo", "echo"),
        )?;
        mesh::write_file(
            &manifests.join("20-service.yaml"),
            &service_manifest("echo", VIP, "echo"),
        )?;

        let operator = net.spawn_operator(
            &node1,
            &operator_files,
            &[
                "--cert-ttl",
                cert_ttl,
                "--max-cert-ttl",
                cert_ttl,
                "--manifest-poll",
                "100ms",
            ],
        )?;
        operator.wait_ready(Duration::from_secs(30))?;

        let (agent_binary, plugin) = (cni_agent::find_cni_agent(None)?, cni_agent::find_cni_plugin(None)?);
        let mut spawn_agent = |node: &Node| -> anyhow::Result<CniAgent> {
            let conf_dir = CniAgent::conf_dir_for(&dir, node);
            std::fs::create_dir_all(&conf_dir)?;
            mesh::write_file(
                &conf_dir.join("10-wired.conflist"),
                r#"{"cniVersion": "1.0.0", "name": "wired", "plugins": []}"#,
            )?;
            net.spawn_cni_agent(node, &agent_binary, &plugin, &manifests, &dir, &[])
        };
        let agent1 = spawn_agent(&node1)?;
        let agent2 = spawn_agent(&node2)?;
        agent1.wait_ready(Duration::from_secs(20))?;
        agent2.wait_ready(Duration::from_secs(20))?;

        let ztunnel_args = ["--cert-ttl", cert_ttl, "--drain-timeout", "1s"];
        let mut spawn_ztunnel = |node: &Node, agent: &CniAgent| {
            let files = XdsZtunnelFiles {
                binary: PathBuf::from(env!("CARGO_BIN_EXE_ztunnel")),
                xds_address: operator.xds_address(),
                token_file: dir.join(format!("{}.token", node.name)),
                root_cert: operator.root_cert.clone(),
                zds_socket: agent.zds_socket.clone(),
            };
            net.spawn_xds_ztunnel(node, &files, &ztunnel_args)
        };
        let z1 = spawn_ztunnel(&node1, &agent1)?;
        let z2 = spawn_ztunnel(&node2, &agent2)?;
        z1.wait_ready(Duration::from_secs(20))?;
        z2.wait_ready(Duration::from_secs(20))?;
        // The plugin's ADD returns once the node's ztunnel has the pod's listeners open.
        agent1.add_wired_pod(&client, NAMESPACE)?;
        agent2.add_wired_pod(&server, NAMESPACE)?;
        Ok(OperatorMesh {
            net,
            node1,
            node2,
            client,
            server,
            operator,
            z1,
            z2,
            manifests,
            agent2,
        })
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, ECHO_PORT))
    }
}

fn namespace_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    ambit.dev/dataplane-mode: ambient\n"
    )
}

fn pod_manifest(pod: &Pod, namespace: &str, service_account: &str, app: &str) -> String {
    let (name, ip, node) = (&pod.name, pod.ip, &pod.node);
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  uid: uid-{name}
  labels:
    app: {app}
spec:
  nodeName: {node}
  serviceAccountName: {service_account}
  containers:
    - name: app
      image: example.invalid/{app}
      ports:
        - containerPort: {ECHO_PORT}
status:
  phase: Running
  podIP: {ip}
  podIPs:
    - ip: {ip}
"
    )
}

fn service_manifest(name: &str, vip: Ipv4Addr, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  clusterIP: {vip}
  clusterIPs: [{vip}]
  selector:
    app: {app}
  ports:
    - name: tcp
      protocol: TCP
      port: 80
      targetPort: {ECHO_PORT}
"
    )
}

fn deny_manifest(name: &str, principal: &str) -> String {
    format!(
        "apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  action: DENY
  rules:
    - from:
        - source:
            principals: [\"{principal}\"]
"
    )
}

/// Sum of the samples of every metric whose name ends with `suffix` (the operator's registry
/// prefixes its names).
fn metric_ending(text: &str, suffix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with(suffix).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `(identity, not_after)` of every certificate ztunnel holds, from `/config_dump`.
fn certificates(z: &Ztunnel) -> anyhow::Result<BTreeMap<String, String>> {
    let dump: serde_json::Value = serde_json::from_str(&z.config_dump()?)?;
    let list = dump["certificates"]
        .as_array()
        .with_context(|| format!("no certificates list in {dump}"))?;
    Ok(list
        .iter()
        .filter_map(|c| Some((c["identity"].as_str()?.to_owned(), c["not_after"].as_str()?.to_owned())))
        .collect())
}

/// Whether `pod` of `z`'s node is listed as captured in its `/config_dump`.
fn captured(z: &Ztunnel, key: &str) -> anyhow::Result<bool> {
    let dump: serde_json::Value = serde_json::from_str(&z.config_dump()?)?;
    Ok(dump["capturedPods"]
        .as_array()
        .is_some_and(|pods| pods.iter().any(|p| p["workload"] == key)))
}

fn echo_once(stream: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    stream.write_all(msg)?;
    let mut buf = vec![0; msg.len()];
    stream.read_exact(&mut buf)?;
    anyhow::ensure!(buf == msg, "echo mismatch: sent {msg:?}, got {buf:?}");
    Ok(())
}

#[test]
fn operator_mode_carries_mtls_both_ways_with_identities_from_the_operator_ca() -> anyhow::Result<()> {
    let mesh = OperatorMesh::start("opflows", "1h")?;
    let marker = b"AMBIT-OPERATOR-PLAINTEXT-9c1e";
    let data = payload(4 << 20, marker);
    let capture = mesh.node1.capture("eth0")?;

    assert_echoed(mesh.client.tcp_connect(mesh.server_addr())?, &data, "client → server")?;
    let client_addr = SocketAddr::from((mesh.client.ip, ECHO_PORT));
    assert_echoed(mesh.server.tcp_connect(client_addr)?, &data, "server → client")?;
    let small = payload(64 << 10, marker);
    assert_echoed(
        mesh.client.tcp_connect(SocketAddr::from((VIP, 80)))?,
        &small,
        "service VIP",
    )?;
    assert_only_tls_on_the_wire(&capture.stop()?, marker);

    // Destination side of client → server, source side of server → client, on node2.
    let into_server = [("reporter", "destination"), ("source_principal", SLEEP)];
    wait_until(Duration::from_secs(5), || {
        Ok(metric(&mesh.z2.metrics()?, "istio_tcp_connections_closed_total", &into_server) >= 2.0)
    })?;
    let m2 = mesh.z2.metrics()?;
    assert!(
        metric(&m2, "istio_tcp_connections_opened_total", &into_server) >= 2.0,
        "{m2}"
    );
    assert!(
        metric(&m2, "istio_tcp_sent_bytes_total", &into_server) >= (data.len() + small.len()) as f64,
        "{m2}"
    );
    let out_of_server = [
        ("reporter", "source"),
        ("destination_principal", SLEEP),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        metric(&m2, "istio_tcp_connections_opened_total", &out_of_server) >= 1.0,
        "{m2}"
    );
    let m1 = mesh.z1.metrics()?;
    let out_of_client = [
        ("reporter", "source"),
        ("destination_principal", ECHO),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        metric(&m1, "istio_tcp_connections_opened_total", &out_of_client) >= 2.0,
        "{m1}"
    );
    assert!(
        metric(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("source_principal", ECHO)]
        ) >= 1.0,
        "{m1}"
    );
    assert!(
        metric(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("destination_service", "echo.default.svc.cluster.local")]
        ) >= 1.0,
        "{m1}"
    );

    // The certificates are the operator's: ztunnel has no CA of its own here, trusts only the
    // operator's root-cert.pem, and the operator counts what it signed.
    let c1 = certificates(&mesh.z1)?;
    let c2 = certificates(&mesh.z2)?;
    assert!(
        c1.contains_key(SLEEP) && !c1.contains_key(ECHO),
        "node1 certificates: {c1:?}"
    );
    assert!(
        c2.contains_key(ECHO) && !c2.contains_key(SLEEP),
        "node2 certificates: {c2:?}"
    );
    let issued = metric_ending(&mesh.operator.metrics()?, "ca_certificates_issued_total");
    assert!(issued >= 2.0, "the operator's CA signed {issued} certificates");
    Ok(())
}

#[test]
fn operator_manifest_changes_apply_live_to_policies_and_pods() -> anyhow::Result<()> {
    let mut mesh = OperatorMesh::start("oplive", "1h")?;
    let addr = mesh.server_addr();
    assert_eq!(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"before")?, b"before");

    let policy = mesh.manifests.join("50-deny-sleep.yaml");
    mesh::write_file(&policy, &deny_manifest("deny-sleep", &SLEEP["spiffe://".len()..]))?;
    wait_until(Duration::from_secs(10), || Ok(echo_fails(&mesh.client, addr)))
        .context("the DENY policy never took effect")?;
    let m2 = mesh.z2.metrics()?;
    assert!(
        metric(
            &m2,
            "ambit_connections_refused_total",
            &[("listener", "inbound_hbone"), ("reason", "policy_denied")]
        ) >= 1.0,
        "{m2}"
    );
    // The source ztunnel got HBONE's 401.
    let m1 = mesh.z1.metrics()?;
    assert!(
        metric(&m1, "ambit_connections_refused_total", &[("reason", "hbone_denied")]) >= 1.0,
        "{m1}"
    );

    std::fs::remove_file(&policy)?;
    wait_until(Duration::from_secs(10), || {
        Ok(echo_roundtrip(mesh.client.tcp_connect(addr)?, b"after")? == b"after")
    })
    .context("removing the DENY policy did not let the client through again")?;

    // A pod that appears later: the object first (as in Kubernetes), then the runtime's ADD.
    let late = mesh.net.add_pod(&mesh.node2, "late")?;
    start_echo(&late, ECHO_PORT)?;
    mesh::write_file(
        &mesh.manifests.join("10-late.yaml"),
        &pod_manifest(&late, NAMESPACE, "late", "late"),
    )?;
    mesh.agent2.add_wired_pod(&late, NAMESPACE)?;
    wait_until(Duration::from_secs(10), || captured(&mesh.z2, "default/late"))
        .context("node2's ztunnel never captured the late pod")?;
    // The ADD returns once node2's ztunnel listens in the pod; node1 learns the pod's address
    // from the operator, independently.
    let late_ip = format!("\"{}\"", late.ip);
    wait_until(Duration::from_secs(10), || {
        Ok(mesh.z1.config_dump()?.contains(&late_ip))
    })
    .context("node1's ztunnel never learned the late pod's address")?;
    let late_addr = SocketAddr::from((late.ip, ECHO_PORT));
    let data = payload(256 << 10, b"LATE");
    assert!(
        echo_roundtrip(mesh.client.tcp_connect(late_addr)?, &data)? == data,
        "late pod echo"
    );
    let m1 = mesh.z1.metrics()?;
    let to_late = [
        ("reporter", "source"),
        ("destination_principal", "spiffe://cluster.local/ns/default/sa/late"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        metric(&m1, "istio_tcp_connections_opened_total", &to_late) >= 1.0,
        "{m1}"
    );
    Ok(())
}

#[test]
fn operator_certificates_rotate_under_a_long_lived_connection() -> anyhow::Result<()> {
    const TTL: Duration = Duration::from_secs(4);
    let mesh = OperatorMesh::start("oprotate", "4s")?;
    let started = Instant::now();
    let mut open = mesh.client.tcp_connect(mesh.server_addr())?;
    open.set_read_timeout(Some(Duration::from_secs(5)))?;
    echo_once(&mut open, b"first")?;

    // Keep the connection busy and watch both ztunnels' certificates until it has outlived two
    // lifetimes and each side has renewed at least twice.
    let mut seen1: Vec<String> = Vec::new();
    let mut seen2: Vec<String> = Vec::new();
    let deadline = started + Duration::from_secs(30);
    let mut round = 0u32;
    loop {
        round += 1;
        echo_once(&mut open, format!("round {round}").as_bytes())
            .with_context(|| format!("the open connection broke after {:?}", started.elapsed()))?;
        for (z, id, seen) in [(&mesh.z1, SLEEP, &mut seen1), (&mesh.z2, ECHO, &mut seen2)] {
            if let Some(not_after) = certificates(z)?.remove(id)
                && seen.last() != Some(&not_after)
            {
                seen.push(not_after);
            }
        }
        if started.elapsed() > 2 * TTL + Duration::from_secs(1) && seen1.len() >= 3 && seen2.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: node1 saw not_after {seen1:?}, node2 {seen2:?}",
            started.elapsed()
        );
        // Pacing between rounds, not synchronisation: each round checks what it needs.
        std::thread::sleep(Duration::from_millis(200));
    }
    for seen in [&seen1, &seen2] {
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "not_after must only move forward: {seen:?}"
        );
    }
    // New connections are made with the renewed certificates, which peers still accept.
    assert_eq!(
        echo_roundtrip(mesh.client.tcp_connect(mesh.server_addr())?, b"new")?,
        b"new"
    );
    let issued = metric_ending(&mesh.operator.metrics()?, "ca_certificates_issued_total");
    assert!(issued >= 6.0, "the operator's CA signed only {issued} certificates");
    echo_once(&mut open, b"last")?;
    Ok(())
}

//! Control-plane push latency, end to end: the real `ambit-operator` binary (a separate process,
//! so its RSS and CPU are its own) in Kubernetes mode against the in-memory API server of
//! `ambit-kube-emulator` (in this process), with 10,000 pods in an enrolled namespace on 100
//! nodes and 1,000 services. N clients connect over TLS with a TokenRequest token; one pod at a
//! time gets a new `status.podIP`, and the bench measures from the API write returning until
//! every client has the new workload.
//!
//! Two kinds of client, labelled in the output:
//! - `xds-client`: ambit's `XdsClient`, what ztunnel runs; "has it" means its published `State`
//!   holds the new IP. Each holds a full model copy (~25 MB at 10k pods), so N=1,000 does not fit.
//! - `delta`: a protocol-level delta ADS client written here: wildcard Address + Authorization,
//!   decodes every resource, keeps name → version, ACKs every response; "has it" means it has
//!   decoded the workload with the new IP and queued the ACK.
//! - `delta-resync`: the same, but once synced each client reopens its stream with
//!   `initial_resource_versions` (about 700 KB at 10k pods), as every ztunnel does when the
//!   operator restarts; the operator answers with the (empty) difference.
//!
//! Run: `cargo bench -p ambit-operator --bench push_latency`. Knobs (env): `RUNS` (default
//! `delta:100,xds-client:100,delta:1000`), `PODS` (10000), `SERVICES` (1000), `NODES` (100),
//! `CHANGES` (25), `GAP_MS` between changes (250). Operator log: `AMBIT_OPERATOR_LOG` (warn).
//! `OPERATOR_BIN` runs another operator binary (a baseline build, to compare in one session);
//! `OPERATOR_CPUS` pins the operator with `taskset -c` (pin the bench itself to other CPUs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_kube_emulator::{Emulator, EmulatorConfig};
use ambit_model::State;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::istio::security::Authorization;
use ambit_proto::istio::workload::{Address, address};
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ambit_xds::client::{ClientConfig, TokenSource, XdsClient};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use futures_util::future::join_all;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use prost::Message;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const SERVER_NAME: &str = "ambit-operator.ambit-system.svc";
const NAMESPACE: &str = "bench";
const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
/// A failure guard for anything the bench waits on, never a synchronisation point.
const GUARD: Duration = Duration::from_secs(120);
/// Writes to the emulator in flight while seeding the cluster.
const SEED_CONCURRENCY: usize = 64;
/// Clients connecting (and taking their initial 11k-resource push) at once.
const CONNECT_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    XdsClient,
    Delta,
    DeltaResync,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::XdsClient => "xds-client",
            Kind::Delta => "delta",
            Kind::DeltaResync => "delta-resync",
        }
    }
}

struct Knobs {
    runs: Vec<(Kind, usize)>,
    pods: usize,
    services: usize,
    nodes: usize,
    changes: usize,
    gap: Duration,
}

fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Knobs {
    fn from_env() -> anyhow::Result<Knobs> {
        let runs = std::env::var("RUNS").unwrap_or_else(|_| "delta:100,xds-client:100,delta:1000".to_owned());
        let runs = runs
            .split(',')
            .map(|run| {
                let (kind, n) = run
                    .split_once(':')
                    .with_context(|| format!("RUNS entry {run:?} is not kind:N"))?;
                let kind = match kind {
                    "xds-client" => Kind::XdsClient,
                    "delta" => Kind::Delta,
                    "delta-resync" => Kind::DeltaResync,
                    other => bail!("RUNS kind {other:?} is not xds-client, delta or delta-resync"),
                };
                Ok((kind, n.parse().with_context(|| format!("RUNS count {n:?}"))?))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Knobs {
            runs,
            pods: knob("PODS", 10_000)?,
            services: knob("SERVICES", 1_000)?,
            nodes: knob("NODES", 100)?,
            changes: knob("CHANGES", 25)?,
            gap: Duration::from_millis(knob("GAP_MS", 250)? as u64),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(knobs))
}

async fn bench(knobs: Knobs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let emulator = Emulator::start(EmulatorConfig::default())?;
    let kubeconfig = dir.path().join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig)?;
    let client = Client::try_from(kube::Config::new(emulator.uri()))?;

    let seeding = Instant::now();
    seed(&client, &knobs).await?;
    eprintln!(
        "seeded {} pods on {} nodes and {} services in {:.1} s",
        knobs.pods,
        knobs.nodes,
        knobs.services,
        seeding.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let operator = OperatorProcess::spawn(&kubeconfig, dir.path())?;
    operator.wait_ready().await?;
    eprintln!(
        "operator pid {} synced in {:.1} s; RSS {} MiB",
        operator.pid(),
        started.elapsed().as_secs_f64(),
        operator.memory().rss_mib
    );
    let root_pem = root_pem(&client).await?;
    let token = ztunnel_token(&client).await?;
    let target = Target {
        endpoint: format!("https://{}", operator.grpc),
        tls: ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root_pem))
            .domain_name(SERVER_NAME),
        token,
    };

    println!(
        "\n{} pods / {} services / {} nodes; load average before: {}",
        knobs.pods,
        knobs.services,
        knobs.nodes,
        load_average()
    );
    println!(
        "| N | client kind | p50 ms | p99 ms | min–max ms | operator RSS idle → with clients (HWM) | operator CPU ms/push | bench-process CPU ms/push |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut next_ip = 0u32;
    for &(kind, n) in &knobs.runs {
        let report = run(&client, &operator, &target, &knobs, kind, n, &mut next_ip).await?;
        println!("{report}");
    }
    operator.stop();
    Ok(())
}

/// CRDs, `ambit-system` with the ztunnel service account, the enrolled namespace, its services
/// and pods (created, then given a pod IP through the status subresource).
async fn seed(client: &Client, knobs: &Knobs) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(CRDS)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let crd: CustomResourceDefinition = serde_norway::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("{} is not a CRD", path.display()))?;
            crds.create(&PostParams::default(), &crd).await?;
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [
        ("ambit-system", json!({})),
        (NAMESPACE, json!({ambit_index::DATAPLANE_MODE_LABEL: "ambient"})),
    ] {
        let namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
        namespaces.create(&PostParams::default(), &namespace).await?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ambit-system");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ztunnel"}}))?,
        )
        .await?;

    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    futures_util::stream::iter(0..knobs.services)
        .map(|s| {
            let services = services.clone();
            async move {
                let service: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{s}")},
                    "spec": {
                        "selector": {"app": format!("app-{s}")},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    },
                }))?;
                services.create(&PostParams::default(), &service).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let services = knobs.services.max(1);
    futures_util::stream::iter(0..knobs.pods)
        .map(|i| {
            let pods = pods.clone();
            let nodes = knobs.nodes.max(1);
            async move {
                let name = format!("pod-{i}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": format!("app-{}", i % services)}},
                    "spec": {
                        "nodeName": format!("node-{}", i % nodes),
                        "serviceAccountName": format!("sa-{}", i % 200),
                        "containers": [{"name": "app", "image": "example/app"}],
                    },
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                let ip = seed_ip(i).to_string();
                let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()
}

/// 10.0.0.0/8 for seeded pods; changed pods move to 10.200.0.0/16 (see [`changed_ip`]).
fn seed_ip(i: usize) -> Ipv4Addr {
    let i = i as u32 + 1;
    Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn changed_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8)
}

/// The `ambit-operator` binary cargo built for this bench, run as a child process.
struct OperatorProcess {
    child: Child,
    grpc: SocketAddr,
    monitoring: SocketAddr,
    log: PathBuf,
}

impl OperatorProcess {
    fn spawn(kubeconfig: &Path, dir: &Path) -> anyhow::Result<OperatorProcess> {
        let grpc = free_port()?;
        let monitoring = free_port()?;
        let log = dir.join("operator.log");
        let binary = std::env::var("OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ambit-operator").to_owned());
        // taskset execs the operator, so the child's pid (RSS, CPU) is still the operator's.
        let mut command = match std::env::var("OPERATOR_CPUS") {
            Ok(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", &cpus]).arg(&binary);
                command
            }
            Err(_) => Command::new(&binary),
        };
        let child = command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--monitoring-addr", &monitoring.to_string()])
            .args(["--server-names", SERVER_NAME])
            .args(["--pod-name", "bench-operator"])
            .env(
                "AMBIT_OPERATOR_LOG",
                std::env::var("AMBIT_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot run the operator binary {binary}"))?;
        Ok(OperatorProcess {
            child,
            grpc,
            monitoring,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` (ready once every watched kind has listed and the index is projected).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + GUARD;
        loop {
            if http_get(self.monitoring, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "operator not ready after {GUARD:?}; log: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn memory(&self) -> Memory {
        Memory::of(&format!("/proc/{}/status", self.pid()))
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    fn stop(mut self) {
        // SIGTERM so it shuts down as in production; the guard kill is for a hung one.
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The mesh root the operator publishes (as leader) in every namespace.
async fn root_pem(client: &Client) -> anyhow::Result<String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "ambit-system");
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(pem) = maps
            .get_opt("ambit-root-cert")
            .await?
            .and_then(|m| m.data)
            .and_then(|d| d.get("root-cert.pem").cloned())
        {
            return Ok(pem);
        }
        if Instant::now() > deadline {
            bail!("the operator published no root ConfigMap within {GUARD:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ztunnel pod on node-0 and a pod-bound token for the CA audience, as ztunnel presents.
async fn ztunnel_token(client: &Client) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ambit-system");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ztunnel-node-0"},
        "spec": {"nodeName": "node-0", "serviceAccountName": "ztunnel", "containers": [{"name": "z", "image": "z"}]},
    }))?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ambit-system");
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": [ambit_operator::ca::DEFAULT_AUDIENCE],
        "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()},
    }}))?;
    Ok(accounts
        .create_token_request("ztunnel", &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest without status")?
        .token)
}

/// Where and how clients connect.
struct Target {
    endpoint: String,
    tls: ClientTlsConfig,
    token: String,
}

/// What the delta clients look for: the current round's changed IP (`round << 32 | ipv4`), and
/// how many clients have seen it.
struct Probe {
    wanted: AtomicU64,
    seen: watch::Sender<usize>,
}

impl Probe {
    fn expect(&self, round: u32, ip: Ipv4Addr) {
        self.seen.send_replace(0);
        self.wanted
            .store(u64::from(round) << 32 | u64::from(u32::from(ip)), Ordering::SeqCst);
    }
}

/// The clients of one run, connected and synced.
enum Clients {
    Full(Vec<watch::Receiver<Arc<State>>>),
    Delta(Arc<Probe>, Vec<tokio::task::JoinHandle<()>>),
}

async fn run(
    client: &Client,
    operator: &OperatorProcess,
    target: &Target,
    knobs: &Knobs,
    kind: Kind,
    n: usize,
    next_ip: &mut u32,
) -> anyhow::Result<String> {
    let idle = operator.memory();
    let stop = CancellationToken::new();
    let connecting = Instant::now();
    let mut clients = match kind {
        Kind::XdsClient => Clients::Full(connect_full(target, n, &stop).await?),
        Kind::Delta | Kind::DeltaResync => {
            let probe = Arc::new(Probe {
                wanted: AtomicU64::new(0),
                seen: watch::Sender::new(0),
            });
            let tasks = connect_delta(target, n, kind == Kind::DeltaResync, &probe, &stop).await?;
            Clients::Delta(probe, tasks)
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = operator.memory();
    eprintln!(
        "{} × {n}: connected and synced in {:.1} s; operator RSS {} → {} MiB",
        kind.label(),
        connecting.elapsed().as_secs_f64(),
        idle.rss_mib,
        connected.rss_mib
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut latencies = Vec::with_capacity(knobs.changes);
    let operator_cpu = operator.cpu_seconds();
    let own_cpu = cpu_seconds("/proc/self/stat");
    for round in 0..knobs.changes {
        *next_ip += 1;
        let ip = changed_ip(*next_ip);
        let pod = format!("pod-{}", (round * 7_919 + *next_ip as usize) % knobs.pods);
        if let Clients::Delta(probe, _) = &clients {
            probe.expect(*next_ip, ip);
        }
        let status = json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
        pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let written = Instant::now();
        let all = async {
            match &mut clients {
                Clients::Full(states) => {
                    let ip = std::net::IpAddr::V4(ip);
                    for result in join_all(
                        states
                            .iter_mut()
                            .map(|s| async move { s.wait_for(|s| s.workload_by_ip(ip).is_some()).await.map(drop) }),
                    )
                    .await
                    {
                        result?;
                    }
                }
                Clients::Delta(probe, _) => {
                    probe.seen.subscribe().wait_for(|seen| *seen >= n).await?;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(GUARD, all)
            .await
            .with_context(|| format!("not every client saw {pod} at {ip} within {GUARD:?}"))??;
        latencies.push(written.elapsed());
        tokio::time::sleep(knobs.gap).await;
    }
    // The gaps are idle time for both processes; CPU per push counts them (the operator's idle
    // cost, lease renewals and bookmarks, is small next to a push; see the idle line).
    let operator_cpu = operator.cpu_seconds() - operator_cpu;
    let own_cpu = cpu_seconds("/proc/self/stat") - own_cpu;
    let memory = operator.memory();

    stop.cancel();
    if let Clients::Delta(_, tasks) = clients {
        for task in tasks {
            task.abort();
        }
    }
    // Let the operator see the streams end before the next run measures its idle RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;

    latencies.sort_unstable();
    let pick = |q: f64| ms(latencies[((latencies.len() as f64 - 1.0) * q).round() as usize]);
    let per_push = |cpu: f64| cpu * 1000.0 / knobs.changes as f64;
    Ok(format!(
        "| {n} | {} | {:.1} | {:.1} | {:.1}–{:.1} | {} → {} MiB ({} MiB) | {:.1} | {:.1} |",
        kind.label(),
        pick(0.5),
        pick(0.99),
        pick(0.0),
        pick(1.0),
        idle.rss_mib,
        memory.rss_mib.max(connected.rss_mib),
        memory.hwm_mib,
        per_push(operator_cpu),
        per_push(own_cpu),
    ))
}

fn client_node(i: usize) -> (String, String) {
    (
        format!(
            "ztunnel~10.250.{}.{}~ztunnel-{i}.ambit-system~ambit-system.svc.cluster.local",
            i / 250,
            i % 250
        ),
        format!("node-{i}"),
    )
}

/// `n` of ambit's `XdsClient`, each synced before the run starts.
async fn connect_full(
    target: &Target,
    n: usize,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<watch::Receiver<Arc<State>>>> {
    let connects = futures_util::stream::iter(0..n).map(|i| {
        let (node_id, node_name) = client_node(i);
        let mut config = ClientConfig::new(target.endpoint.clone(), node_id);
        config.tls = Some(target.tls.clone());
        let token = target.token.clone();
        config.token = TokenSource::Callback(Arc::new(move || Ok(token.clone())));
        config.node_metadata.insert("NODE_NAME".to_owned(), node_name);
        let (tx, state) = watch::channel(Arc::new(State::default()));
        let client = XdsClient::new(config, tx);
        let mut status = client.status();
        tokio::spawn(client.run(stop.clone()));
        async move {
            tokio::time::timeout(GUARD, status.wait_for(|s| s.synced))
                .await
                .context("xds client did not sync")??;
            anyhow::Ok(state)
        }
    });
    connects
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// `n` protocol-level clients, each synced (both types answered) before the run starts.
async fn connect_delta(
    target: &Target,
    n: usize,
    resync: bool,
    probe: &Arc<Probe>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let endpoint = Endpoint::from_shared(target.endpoint.clone())?.tls_config(target.tls.clone())?;
    let connects = futures_util::stream::iter(0..n).map(|i| {
        let endpoint = endpoint.clone();
        let token = target.token.clone();
        let probe = Arc::clone(probe);
        let stop = stop.clone();
        async move {
            let (synced_tx, synced) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    result = delta_client(endpoint, token, i, resync, probe, synced_tx) => {
                        if let Err(error) = result {
                            eprintln!("delta client {i}: {error:#}");
                        }
                    }
                }
            });
            tokio::time::timeout(GUARD, synced)
                .await
                .context("delta client did not sync")?
                .context("delta client ended before syncing")?;
            anyhow::Ok(task)
        }
    });
    connects
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One delta ADS stream: wildcard Address + Authorization, every resource decoded, name →
/// version kept, every response ACKed; reports each round's IP once to the probe. With `resync`,
/// the first stream only fills the versions and a second one opens with them.
async fn delta_client(
    endpoint: Endpoint,
    token: String,
    i: usize,
    resync: bool,
    probe: Arc<Probe>,
    synced: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let channel = endpoint.connect().await?;
    let (node_id, node_name) = client_node(i);
    let mut versions: [HashMap<String, String>; 2] = Default::default();
    let mut synced = Some(synced);
    let mut reopen = resync;
    let mut last_round = 0u32;
    'stream: loop {
        let (tx, rx) = mpsc::channel(4);
        for (k, type_url) in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL].into_iter().enumerate() {
            let node = (k == 0).then(|| Node {
                id: node_id.clone(),
                metadata: Some(prost_types::Struct {
                    fields: [(
                        "NODE_NAME".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(node_name.clone())),
                        },
                    )]
                    .into(),
                }),
                ..Node::default()
            });
            tx.try_send(DeltaDiscoveryRequest {
                node,
                type_url: type_url.to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                initial_resource_versions: versions[k].clone(),
                ..DeltaDiscoveryRequest::default()
            })?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let mut responses = AggregatedDiscoveryServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        let mut answered = [false; 2];
        while let Some(response) = responses.message().await? {
            let slot = usize::from(response.type_url == AUTHORIZATION_TYPE_URL);
            let wanted = probe.wanted.load(Ordering::SeqCst);
            let (round, wanted_ip) = ((wanted >> 32) as u32, Ipv4Addr::from(wanted as u32).octets());
            let mut hit = false;
            for resource in response.resources {
                let Some(any) = &resource.resource else { continue };
                if slot == 0 {
                    if let Some(address::Type::Workload(workload)) = Address::decode(any.value.as_slice())?.r#type {
                        hit |= workload.addresses.iter().any(|a| a.as_slice() == wanted_ip);
                    }
                } else {
                    Authorization::decode(any.value.as_slice())?;
                }
                versions[slot].insert(resource.name, resource.version);
            }
            for name in &response.removed_resources {
                versions[slot].remove(name);
            }
            tx.send(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..DeltaDiscoveryRequest::default()
            })
            .await?;
            answered[slot] = true;
            if answered == [true, true] {
                if reopen {
                    // Dropping this stream's halves ends it; the next opens with the versions.
                    reopen = false;
                    continue 'stream;
                }
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                }
            }
            if hit && round != last_round {
                last_round = round;
                probe.seen.send_modify(|seen| *seen += 1);
            }
        }
        bail!("stream closed by the operator")
    }
}

struct Memory {
    rss_mib: u64,
    hwm_mib: u64,
}

impl Memory {
    fn of(path: &str) -> Memory {
        let status = std::fs::read_to_string(path).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024)
        };
        Memory {
            rss_mib: field("VmRSS:"),
            hwm_mib: field("VmHWM:"),
        }
    }
}

/// utime + stime of a process, from `/proc/<pid>/stat`, in seconds (USER_HZ = 100 on Linux).
fn cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

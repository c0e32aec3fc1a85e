//! Push latency of the workload xDS server: 10,000 workloads in the store, N in-process
//! ztunnel clients over loopback, one pod changed at a time; prints p50/p99 of the time until
//! every client has applied the change and published its new `State`, with CPU and RSS.
//!
//! Run: `cargo bench -p ambit-xds --bench push_latency` (env `CLIENTS=100,1000`, `CHANGES=25`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_model::{State, Workload};
use ambit_proto::ADDRESS_TYPE_URL;
use ambit_proto::AUTHORIZATION_TYPE_URL;
use ambit_xds::client::{ClientConfig, XdsClient};
use ambit_xds::convert::{
    ConvertOptions, ReceivedAddress, address_any, address_from_any, peer_authentication, to_resources,
    workload_to_proto,
};
use ambit_xds::server::{AllowAll, ResourceStore, ServerConfig, ServerMetrics, XdsServer};
use futures_util::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

const WORKLOADS: usize = 10_000;

fn main() -> anyhow::Result<()> {
    let clients: Vec<usize> = std::env::var("CLIENTS")
        .unwrap_or_else(|_| "100,1000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let changes: usize = std::env::var("CHANGES").unwrap_or_else(|_| "25".to_owned()).parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mesh = mesh()?;
    rebuild_cost(&mesh)?;
    for n in clients {
        runtime.block_on(run(&mesh, n, changes))?;
    }
    Ok(())
}

fn mesh() -> anyhow::Result<State> {
    let mut yaml = String::from("workloads:\n");
    for i in 0..WORKLOADS {
        let (a, b) = (i / 250, i % 250 + 1);
        yaml.push_str(&format!(
            "  - {{ name: pod-{i}, namespace: ns-{}, serviceAccount: sa-{}, node: node-{}, addresses: [10.{}.{a}.{b}], labels: {{ app: app-{} }} }}\n",
            i % 50,
            i % 200,
            i % 100,
            i / 62_500 + 1,
            i % 500
        ));
    }
    yaml.push_str("services:\n");
    for s in 0..500 {
        yaml.push_str(&format!(
            "  - {{ name: svc-{s}, namespace: ns-{}, hostname: svc-{s}.ns-{}.svc.cluster.local, vips: [10.96.{}.{}], ports: [ {{ port: 80, targetPort: 8080 }} ], selector: {{ app: app-{s} }} }}\n",
            s % 50,
            s % 50,
            s / 250,
            s % 250 + 1
        ));
    }
    yaml.push_str("peerAuthentications:\n  - { name: strict, namespace: ambit-system, mode: STRICT }\n");
    Ok(State::from_config(ambit_model::config::parse(&yaml)?))
}

/// What a client pays per push besides the wire: rebuilding the 10k-workload `State`.
fn rebuild_cost(mesh: &State) -> anyhow::Result<()> {
    let options = ConvertOptions::default();
    let resources = to_resources(mesh, &options);
    let mut workloads = Vec::new();
    for (name, any) in &resources.addresses {
        if let ReceivedAddress::Workload { workload, .. } = address_from_any(name, any, &options)? {
            workloads.push(Arc::new(workload));
        }
    }
    let start = Instant::now();
    let rounds = 50;
    for _ in 0..rounds {
        let state = State::from_parts(
            "cluster.local".to_owned(),
            ambit_model::MtlsMode::Permissive,
            workloads.clone(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        std::hint::black_box(state);
    }
    println!(
        "state rebuild ({} workloads): {:.2} ms",
        workloads.len(),
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
    );
    Ok(())
}

async fn run(mesh: &State, n: usize, changes: usize) -> anyhow::Result<()> {
    let options = ConvertOptions::default();
    let store = ResourceStore::new(16_384);
    let resources = to_resources(mesh, &options);
    store.replace_all(ADDRESS_TYPE_URL, resources.addresses);
    store.replace_all(AUTHORIZATION_TYPE_URL, resources.authorizations);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let metrics = Arc::new(ServerMetrics::default());
    let server = XdsServer::new(
        Arc::clone(&store),
        Arc::new(AllowAll),
        Arc::clone(&metrics),
        ServerConfig::default(),
    );
    let service = server.clone().into_service();
    let serving = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(service, TcpListenerStream::new(listener)),
    );

    let stop = CancellationToken::new();
    let mut states = Vec::with_capacity(n);
    let connect_start = Instant::now();
    for i in 0..n {
        let (tx, rx) = watch::channel(Arc::new(State::default()));
        let client = XdsClient::new(ClientConfig::new(endpoint.clone(), format!("ztunnel-{i}")), tx);
        let mut status = client.status();
        tokio::spawn(client.run(stop.clone()));
        states.push(rx);
        status.wait_for(|s| s.synced).await?;
    }
    println!(
        "\nN = {n}: {n} clients synced {WORKLOADS} workloads in {:.1} s; RSS {} MiB",
        connect_start.elapsed().as_secs_f64(),
        rss_mib()
    );

    let target = mesh
        .workloads()
        .nth(WORKLOADS / 2)
        .map(|w| Workload::clone(w))
        .ok_or_else(|| anyhow::anyhow!("no workload"))?;
    let mut latencies = Vec::with_capacity(changes);
    let cpu_start = cpu_seconds();
    let wall_start = Instant::now();
    for round in 0..changes {
        let mut changed = target.clone();
        let ip: std::net::IpAddr = format!("10.200.{}.{}", round / 250, round % 250 + 1).parse()?;
        changed.addresses = vec![ip];
        let mtls = peer_authentication::for_workload(mesh, &changed);
        let proto = workload_to_proto(mesh, &changed, &mtls.policy_names, &options);
        let start = Instant::now();
        store.upsert(
            ADDRESS_TYPE_URL,
            &proto.uid.clone(),
            address_any(ambit_proto::istio::workload::address::Type::Workload(proto)),
        );
        join_all(
            states
                .iter_mut()
                .map(|rx| rx.wait_for(move |s| s.workload_by_ip(ip).is_some())),
        )
        .await;
        latencies.push(start.elapsed());
    }
    let cpu = cpu_seconds() - cpu_start;
    let wall = wall_start.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "N = {n}: one pod changed, all clients applied: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {changes} changes",
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(1.0))
    );
    println!(
        "N = {n}: CPU {:.1} ms per push (process, server + all clients, {:.0}% of one core over {:.1} s); RSS {} MiB; pushes {}",
        cpu * 1000.0 / changes as f64,
        cpu / wall.as_secs_f64() * 100.0,
        wall.as_secs_f64(),
        rss_mib(),
        metrics.pushes(ADDRESS_TYPE_URL)
    );
    stop.cancel();
    server.shutdown();
    serving.abort();
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// User + system CPU of this process, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

//! What Ambit adds to pod start-up: the time of a CNI ADD (and DEL) through the node's chain,
//! Debian's `bridge` + `host-local` alone (the no-mesh baseline) against the same chain with
//! `ambit-cni` last, for a pod outside the mesh and for an enrolled pod (capture rules written in
//! the pod, netns handed to ztunnel over ZDS and acknowledged). Scenarios alternate pod by pod
//! in one run, so machine noise hits them alike; medians and p90 are printed.
//!
//! Run as root: `cargo bench -p ambit-cni-agent --bench pod_add [-- --pods N]` (builds the
//! release binaries first with `make build`, or point `AMBIT_BENCH_BIN_DIR` at them).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ambit_testkit::{
    Network,
    cni::{self, Runtime, Sandbox},
    cni_agent::CniAgent,
    mesh::{self, MeshConfig, TestCa, ZtunnelFiles},
};
use anyhow::Context as _;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Baseline,
    NotEnrolled,
    Enrolled,
}

const SCENARIOS: [(Scenario, &str); 3] = [
    (Scenario::Baseline, "bridge + host-local (no mesh)"),
    (Scenario::NotEnrolled, "+ ambit-cni, namespace not enrolled"),
    (Scenario::Enrolled, "+ ambit-cni, enrolled (rules + ZDS ack)"),
];

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("AMBIT_BENCH_BIN_DIR") {
        return Ok(Path::new(&dir).join(name));
    }
    let release = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release")
        .join(name);
    anyhow::ensure!(
        release.is_file(),
        "{} missing: run `make build` (release binaries) first",
        release.display()
    );
    Ok(release)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pods: usize = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()
        .context("--pods takes a number")?
        .unwrap_or(40);
    ambit_testkit::cleanup_on_interrupt()?;
    let mut net = Network::new("podadd")?;
    let node = net.add_node("node1")?;
    let dir = net.log_dir().to_owned();

    // ztunnel from a local config (no operator needed: enrollment is the agent's, and a pod
    // hand-over needs only ZDS), the agent reading a manifest directory.
    let ca = TestCa::generate(&dir)?;
    let config = dir.join("ztunnel.yaml");
    MeshConfig::default().write(&config)?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    ambit.dev/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n",
    )?;
    let conflist = cni::bridge_conflist(
        &node.pod_cidr.to_string(),
        &node.bridge_ip.to_string(),
        "10.244.1.100",
        "10.244.1.250",
        &dir.join("ipam"),
    );
    let conf_dir = CniAgent::conf_dir_for(&dir, &node);
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::write(
        conf_dir.join("10-bridge.conflist"),
        serde_json::to_vec_pretty(&conflist)?,
    )?;
    let baseline_dir = dir.join("baseline-net.d");
    std::fs::create_dir_all(&baseline_dir)?;
    std::fs::write(
        baseline_dir.join("10-bridge.conflist"),
        serde_json::to_vec_pretty(&conflist)?,
    )?;

    let agent = net.spawn_cni_agent(
        &node,
        &binary("ambit-cni-agent")?,
        &binary("ambit-cni")?,
        &manifests,
        &dir,
        &[],
    )?;
    agent.wait_ready(Duration::from_secs(20))?;
    let ztunnel = net.spawn_ztunnel(
        &node,
        &ZtunnelFiles {
            binary: mesh::find_ztunnel(Some(&binary("ztunnel")?))?,
            config,
            ca,
        },
        &["--zds-socket", &agent.zds_socket.display().to_string()],
    )?;
    ztunnel.wait_ready(Duration::from_secs(20))?;
    let meshed = agent.runtime();
    let baseline = Runtime {
        conf_dir: baseline_dir,
        ..meshed.clone()
    };

    let mut add: Vec<Vec<Duration>> = vec![Vec::new(); SCENARIOS.len()];
    let mut del: Vec<Vec<Duration>> = vec![Vec::new(); SCENARIOS.len()];
    for i in 0..pods {
        for (s, (scenario, _)) in SCENARIOS.iter().enumerate() {
            let namespace = if *scenario == Scenario::Enrolled {
                "mesh"
            } else {
                "plain"
            };
            let name = format!("p{i}-{s}");
            let netns = net.add_sandbox(&node, &name)?;
            mesh::write_file(
                &manifests.join(format!("{name}.yaml")),
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  nodeName: node1\n  containers: [{{name: app, image: x}}]\n"
                ),
            )?;
            let sandbox = Sandbox {
                namespace: namespace.into(),
                name: name.clone(),
                uid: format!("uid-{name}"),
                container_id: format!("ctr-{name}"),
                netns: Some(netns.path()),
                interface: "eth0".into(),
            };
            let runtime = if *scenario == Scenario::Baseline {
                &baseline
            } else {
                &meshed
            };
            let start = Instant::now();
            let result = runtime.add(&sandbox).with_context(|| format!("ADD {name}"))?;
            add[s].push(start.elapsed());
            let start = Instant::now();
            runtime
                .del(&sandbox, Some(&result))
                .with_context(|| format!("DEL {name}"))?;
            del[s].push(start.elapsed());
        }
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pod ADD/DEL through the CNI chain, {pods} pods per scenario, interleaved (load: {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| chain | ADD p50 (ms) | ADD p90 (ms) | DEL p50 (ms) | ADD p50 ÷ baseline |");
    println!("|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut base = 0.0;
    for (s, (_, label)) in SCENARIOS.iter().enumerate() {
        add[s].sort();
        del[s].sort();
        let p50 = ms(percentile(&add[s], 0.5));
        if s == 0 {
            base = p50;
        }
        println!(
            "| {label} | {p50:.1} | {:.1} | {:.1} | {:.2}× |",
            ms(percentile(&add[s], 0.9)),
            ms(percentile(&del[s], 0.5)),
            p50 / base
        );
    }
    let metrics = agent.metrics()?;
    let enrolled = metrics
        .lines()
        .find(|l| l.starts_with("ambit_cni_agent_requests_total") && l.contains("outcome=\"enrolled\""))
        .unwrap_or("no enrolled ADDs counted");
    println!("agent: {enrolled}");
    net.close()
}

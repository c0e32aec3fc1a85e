//! One benchmark batch: build the scenario, measure every path in rotating order for each run,
//! then memory under load, and print the report.

use std::{path::PathBuf, time::Duration};

use ambit_testkit::mesh::{process_cpu_time, process_memory};
use anyhow::Context as _;

use crate::{
    Args, load,
    load::Cpus,
    report::{Metric, Results},
    scenario::{PathKind, Scenario},
};

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.seconds > 0,
        "--runs and --seconds must be at least 1"
    );
    let mut paths: Vec<PathKind> = Vec::new();
    for p in &args.paths {
        if !paths.contains(p) {
            paths.push(*p);
        }
    }
    if paths.contains(&PathKind::Haproxy) && which("haproxy").is_none() {
        eprintln!("note: haproxy is not installed (Debian: apt-get install haproxy); skipping the reference path");
        paths.retain(|p| *p != PathKind::Haproxy);
    }
    let cpus = Cpus::detect();
    let load_before = load_average();
    if load_before > BUSY_LOAD {
        eprintln!("note: load average is {load_before:.2}; other work on this machine will skew the figures");
    }
    let seconds = Duration::from_secs(args.seconds);

    eprintln!("building the namespaces and starting servers and proxies ...");
    let scenario = Scenario::build(&paths, args.ztunnel.as_deref(), cpus)?;
    let mut results = Results::default();
    for &path in &paths {
        for pid in scenario.proxy_pids(path) {
            results.push(Metric::RssIdle, path, mib(process_memory(pid)?.rss_kib));
        }
    }

    for run in 0..args.runs {
        let mut order = paths.clone();
        order.rotate_left(run % paths.len());
        let mut p50 = Vec::new();
        for &path in &order {
            eprintln!("run {}/{}: {}", run + 1, args.runs, path.label());
            let latency = measure(&scenario, path, args.seconds, seconds, cpus, &mut results)
                .with_context(|| format!("run {} of path {}", run + 1, path.label()))?;
            p50.push((path, latency));
        }
        let direct = p50.iter().find(|(p, _)| *p == PathKind::Direct).map(|(_, l)| l.clone());
        if let Some(direct) = direct {
            for (path, l) in p50.iter().filter(|(p, _)| *p != PathKind::Direct) {
                results.push(Metric::AddedP50, *path, micros(l.p50) - micros(direct.p50));
                results.push(Metric::AddedP99, *path, micros(l.p99) - micros(direct.p99));
            }
        }
    }

    for &path in paths.iter().filter(|p| **p != PathKind::Direct) {
        eprintln!("{}: holding {} connections open", path.label(), args.connections);
        let targets = scenario.select(path)?;
        let pids = scenario.proxy_pids(path);
        let loaded = load::with_open_connections(&scenario.client, targets.echo, args.connections, || {
            pids.iter()
                .map(|pid| process_memory(*pid))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        for memory in loaded {
            results.push(Metric::RssLoaded, path, mib(memory.rss_kib));
            results.push(Metric::PeakRss, path, mib(memory.hwm_kib));
        }
        scenario.check_proxies(path)?;
    }

    println!(
        "{}",
        header(args, &paths, cpus, &scenario, (load_before, load_average()))
    );
    println!("{}", results.table(&paths, args.connections));
    Ok(())
}

/// One run of every test over `path`; returns its latency for the added-latency rows.
fn measure(
    scenario: &Scenario,
    path: PathKind,
    secs: u64,
    duration: Duration,
    cpus: Cpus,
    results: &mut Results,
) -> anyhow::Result<load::Latency> {
    let targets = scenario.select(path)?;
    let pids = scenario.proxy_pids(path);
    let cpu = || -> anyhow::Result<f64> {
        pids.iter()
            .map(|pid| process_cpu_time(*pid).map(|d| d.as_secs_f64()))
            .sum()
    };

    let bits = load::iperf3(&scenario.client, targets.iperf, secs, cpus)?;
    results.push(Metric::Throughput, path, bits / 1e9);

    let before = cpu()?;
    let latency = load::ping_pong(&scenario.client, targets.echo, duration, cpus.client)?;
    let used = cpu()? - before;
    results.push(Metric::RttP50, path, micros(latency.p50));
    results.push(Metric::RttP99, path, micros(latency.p99));
    if !pids.is_empty() {
        results.push(
            Metric::CpuPerThousandRequests,
            path,
            used / latency.requests as f64 * 1000.0,
        );
    }

    let before = cpu()?;
    let (rate, total) = load::connection_rate(&scenario.client, targets.echo, duration, 1, cpus.client)?;
    let used = cpu()? - before;
    results.push(Metric::ConnSequential, path, rate);
    if !pids.is_empty() && total > 0 {
        results.push(Metric::CpuPerThousandConnections, path, used / total as f64 * 1000.0);
    }
    let (rate, _) = load::connection_rate(&scenario.client, targets.echo, duration, 4, cpus.client)?;
    results.push(Metric::ConnParallel, path, rate);
    scenario.check_proxies(path)?;
    Ok(latency)
}

fn header(args: &Args, paths: &[PathKind], cpus: Cpus, scenario: &Scenario, load: (f64, f64)) -> String {
    let nproc = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let placement = match (cpus.client, cpus.server) {
        (Some(c), Some(s)) => format!("load generators on CPU {c}, echo and iperf3 servers on CPU {s}"),
        _ => "nothing pinned (one CPU)".into(),
    };
    let mut proxies = Vec::new();
    if paths.contains(&PathKind::Ambit) {
        let binary = scenario.ztunnel_binary.as_deref().unwrap_or(std::path::Path::new("?"));
        proxies.push(format!(
            "ztunnels (one per node namespace) unpinned, {}",
            binary.display()
        ));
    }
    if paths.contains(&PathKind::Haproxy) {
        proxies.push("haproxy (node1 namespace, default threads) unpinned".into());
    }
    format!(
        "## Ambit L4 benchmark\n\n\
         - machine: {nproc} vCPU ({model}), kernel {}\n\
         - placement: {placement}; {}\n\
         - method: {} runs × {} s per test, path order rotated each run; cells are median (min–max) over runs; \
         RTT is 1 KiB request / 1 KiB response on one connection; memory is per proxy process (node1 / node2)\n\
         - load average (1 min) before / after the batch (the batch itself loads both CPUs): {:.2} / {:.2}{}\n",
        kernel.trim(),
        if proxies.is_empty() {
            "no proxies".to_owned()
        } else {
            proxies.join("; ")
        },
        args.runs,
        args.seconds,
        load.0,
        load.1,
        if load.0 > BUSY_LOAD {
            " (other work was running before the start: compare with care)"
        } else {
            ""
        },
    )
}

/// A 1-minute load average above this means something else competed for the CPUs.
const BUSY_LOAD: f64 = 1.0;

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

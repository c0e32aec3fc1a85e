//! `ambitctl demo`: a two-node ztunnel mesh in network namespaces, walked through step by step
//! (traffic, wire check, live policy, metrics, teardown). The cluster plumbing is in
//! `demo/cluster.rs`; this file is the script and its checks.

mod cluster;

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use ambit_testkit::{Pod, pcap_contains, pcap_tls_records};
use anyhow::{Context as _, bail, ensure};

use self::cluster::{Cluster, SLEEP_PRINCIPAL};

/// How long a changed policy may take to reach ztunnel (it polls its config file).
const POLICY_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// ztunnel binary (default: next to ambitctl, else target/release or target/debug).
    #[arg(long)]
    ztunnel: Option<PathBuf>,
    /// Keep the namespaces and ztunnels after the demo; Ctrl-C tears them down.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &DemoArgs) -> ExitCode {
    if let Err(e) = ambit_testkit::cleanup_on_interrupt() {
        eprintln!("ambitctl demo: {e:#}");
        return ExitCode::FAILURE;
    }
    println!("Ambit two-node demo: nodes and pods are network namespaces on this machine.\n");
    println!("[setup]");
    let mut cluster = match Cluster::start(args.ztunnel.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("\nsetup FAILED: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    let mut failed = 0;
    let mut step = |title: &str, cluster: &mut Cluster, f: &dyn Fn(&mut Cluster) -> anyhow::Result<()>| {
        println!("\n[{title}]");
        match f(cluster) {
            Ok(()) => println!("  => ok"),
            Err(e) => {
                failed += 1;
                println!("  => FAILED: {e:#}");
                eprintln!("process logs:\n{}", cluster.logs());
            }
        }
    };
    step("1. sleep -> echo through the mesh", &mut cluster, &request_step);
    step("2. wire check: tcpdump on node1 eth0", &mut cluster, &wire_step);
    step("3. live policy: DENY the sleep principal", &mut cluster, &policy_step);
    step("4. metrics of the ztunnel on node2", &mut cluster, &metrics_step);

    if args.keep {
        ambit_testkit::set_interrupt_exit_code(if failed == 0 { 0 } else { 1 });
        keep_until_interrupted(&cluster);
    }
    println!("\n[5. teardown]");
    let prefix = cluster.net.prefix().to_owned();
    match cluster.net.close() {
        Ok(()) => println!("  stopped ztunnels, deleted namespaces {prefix}*\n  => ok"),
        Err(e) => {
            failed += 1;
            println!("  => FAILED: {e:#}");
        }
    }
    if failed == 0 {
        println!("\nAll steps passed.");
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} step(s) failed.");
        ExitCode::FAILURE
    }
}

fn request_step(c: &mut Cluster) -> anyhow::Result<()> {
    for (addr, what) in [(c.echo_addr(), "pod IP"), (c.service_addr(), "service VIP")] {
        let message = format!("hello echo via {what}");
        let reply =
            exchange(&c.sleep, addr, message.as_bytes()).with_context(|| format!("sleep -> {addr} ({what})"))?;
        ensure!(
            reply == message.as_bytes(),
            "echo from {addr} differs: {:?}",
            String::from_utf8_lossy(&reply)
        );
        println!("  sleep -> {addr:<16} ({what}): sent and got back {message:?}");
    }
    Ok(())
}

fn wire_step(c: &mut Cluster) -> anyhow::Result<()> {
    let marker = format!("AMBIT-DEMO-PLAINTEXT-MARKER-{}", std::process::id());
    let capture = c.node1.capture("eth0")?;
    let reply = exchange(&c.sleep, c.echo_addr(), marker.as_bytes());
    let pcap = capture.stop()?;
    let reply = reply.context("the request during the capture failed")?;
    ensure!(reply == marker.as_bytes(), "echo differs during the capture");
    let path = c.net.log_dir().join("node1-eth0.pcap");
    std::fs::write(&path, &pcap).with_context(|| format!("cannot save {}", path.display()))?;
    let records = pcap_tls_records(&pcap);
    let leaked = pcap_contains(&pcap, marker.as_bytes());
    println!("  sent {marker:?} from sleep to echo while capturing node1's underlay link");
    println!("  captured {} bytes ({})", pcap.len(), path.display());
    println!("  TLS application-data records seen: {records}");
    println!(
        "  application marker visible on the wire: {}",
        if leaked { "YES" } else { "no" }
    );
    ensure!(!leaked, "the marker crossed node1's eth0 in plaintext");
    ensure!(
        records > 0,
        "no TLS records on node1's eth0: the request did not go over HBONE"
    );
    Ok(())
}

fn policy_step(c: &mut Cluster) -> anyhow::Result<()> {
    c.set_deny_sleep(true)?;
    println!("  config rewritten with DENY policy default/deny-sleep (from principals: [{SLEEP_PRINCIPAL}])");
    let started = Instant::now();
    wait_for(POLICY_TIMEOUT, || {
        exchange(&c.sleep, c.echo_addr(), b"should be denied").is_err()
    })
    .context("connections from sleep were still accepted")?;
    let denied = exchange(&c.sleep, c.echo_addr(), b"should be denied");
    println!(
        "  sleep -> {}: refused ({}) after {} ms",
        c.echo_addr(),
        denied.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        started.elapsed().as_millis()
    );

    c.set_deny_sleep(false)?;
    println!("  policy removed from the config");
    wait_for(POLICY_TIMEOUT, || {
        exchange(&c.sleep, c.echo_addr(), b"allowed again").is_ok()
    })
    .context("connections from sleep stayed refused after the policy was removed")?;
    println!("  sleep -> {}: allowed again", c.echo_addr());
    Ok(())
}

fn metrics_step(c: &mut Cluster) -> anyhow::Result<()> {
    let metrics = c.ztunnel(&c.node2)?.metrics()?;
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("istio_tcp_")).collect();
    ensure!(!lines.is_empty(), "no istio_tcp_* series in node2's /metrics");
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// Sends `message` from `pod` to `addr` and returns what comes back (as many bytes as were
/// sent). A refused, reset or closed connection is an error.
fn exchange(pod: &Pod, addr: SocketAddr, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut conn = pod.tcp_connect(addr)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(message).context("send")?;
    let mut reply = vec![0; message.len()];
    conn.read_exact(&mut reply)
        .context("connection closed before the echo came back")?;
    Ok(reply)
}

fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            bail!("still not the case after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn keep_until_interrupted(c: &Cluster) -> ! {
    println!("\n[kept] the mesh keeps running. Try:");
    println!(
        "  ip netns exec {} bash -c 'exec 3<>/dev/tcp/{}/{}; echo hi >&3; head -n1 <&3'",
        c.sleep.netns.name(),
        c.echo.ip,
        cluster::ECHO_PORT
    );
    println!(
        "  ip netns exec {} curl -s 127.0.0.1:15020/metrics | grep istio_tcp",
        c.node2.netns.name()
    );
    println!("  logs, config and capture: {}", c.net.log_dir().display());
    println!("Press Ctrl-C to tear everything down.");
    loop {
        std::thread::park();
    }
}

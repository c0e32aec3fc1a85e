//! The node's probe SNAT: a "node" namespace (where the agent and kubelet run) and a captured
//! "pod" behind a veth. With the pod's address added, the node's connections reach the pod's
//! app from the probe address, past the capture; without it they are captured like any other.
//! The node-side functions act on the calling thread's namespace, so they run on a thread
//! inside "node".

use std::net::{IpAddr, SocketAddr};

use ambit_capture::{
    Backend, INBOUND_PLAINTEXT_PORT, PROBE_SOURCE_V4, PROBE_SOURCE_V6, add_probe_target, install, install_host,
    probe_targets, remove_host, remove_probe_target,
};
use ambit_testkit::Netns;
use anyhow::{Context as _, ensure};

use crate::harness::{Namespaces, accept, assert_idle, connect, ip, ips, listen, ruleset};

const APP_PORT: u16 = 8080;

/// Connects from `node` to `to` and returns the source address `listener` saw.
fn source_seen(node: &Netns, to: SocketAddr, listener: &std::net::TcpListener) -> anyhow::Result<IpAddr> {
    let _client = connect(node, to, None)?;
    let (_, peer) = accept(listener).with_context(|| format!("connecting to {to}"))?;
    assert_idle(listener)?;
    Ok(peer.ip())
}

fn probes_bypass_capture(backend: Backend) -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new(&format!("probes-{backend}"))?;
    let node = namespaces.add("node")?;
    let pod = namespaces.add("pod")?;
    veth(&node, &pod)?;
    let pod_v4: IpAddr = "10.98.0.2".parse()?;
    let pod_v6: IpAddr = "fd00:98::2".parse()?;
    let node_v4: IpAddr = "10.98.0.1".parse()?;
    let node_v6: IpAddr = "fd00:98::1".parse()?;

    let app_v4 = listen(&pod, "0.0.0.0:8080".parse()?)?;
    let app_v6 = listen(&pod, "[::]:8080".parse()?)?;
    let inbound_v4 = listen(&pod, SocketAddr::new("0.0.0.0".parse()?, INBOUND_PLAINTEXT_PORT))?;
    let inbound_v6 = listen(&pod, SocketAddr::new("::".parse()?, INBOUND_PLAINTEXT_PORT))?;
    install(backend, &pod.path())?;

    // Before the pod is a probe target, the node's connections are captured like any other.
    let seen = source_seen(&node, SocketAddr::new(pod_v4, APP_PORT), &inbound_v4)?;
    ensure!(seen == node_v4, "captured connection came from {seen}");

    node.try_run(|| -> anyhow::Result<()> {
        install_host(backend)?;
        install_host(backend).context("installing the host rules twice")?;
        for ip in [pod_v4, pod_v6, pod_v4] {
            add_probe_target(backend, ip)?;
        }
        install_host(backend).context("re-installing with targets present")?;
        Ok(())
    })??;
    let targets = node.try_run(|| probe_targets(backend))??;
    ensure!(targets.len() == 2, "each target once: {targets:?}");
    ensure!(ips(targets) == ips([pod_v4, pod_v6]));

    let seen = source_seen(&node, SocketAddr::new(pod_v4, APP_PORT), &app_v4)?;
    ensure!(
        seen == IpAddr::from(PROBE_SOURCE_V4),
        "probe reached the app from {seen}"
    );
    assert_idle(&inbound_v4)?;
    let seen = source_seen(&node, SocketAddr::new(pod_v6, APP_PORT), &app_v6)?;
    ensure!(
        seen == IpAddr::from(PROBE_SOURCE_V6),
        "IPv6 probe reached the app from {seen}"
    );
    assert_idle(&inbound_v6)?;

    node.try_run(|| -> anyhow::Result<()> {
        remove_probe_target(backend, pod_v4)?;
        remove_probe_target(backend, pod_v4).context("removing a target twice")?;
        ensure!(probe_targets(backend)? == vec![pod_v6]);
        Ok(())
    })??;
    let seen = source_seen(&node, SocketAddr::new(pod_v4, APP_PORT), &inbound_v4)?;
    ensure!(seen == node_v4, "after removal the node's connection came from {seen}");
    let seen = source_seen(&node, SocketAddr::new(pod_v6, APP_PORT), &app_v6)?;
    ensure!(
        seen == IpAddr::from(PROBE_SOURCE_V6),
        "the other target lost its SNAT: {seen}"
    );

    node.try_run(|| -> anyhow::Result<()> {
        remove_host(backend)?;
        remove_host(backend).context("removing the host rules twice")?;
        remove_probe_target(backend, pod_v6).context("removing a target without host rules")?;
        ensure!(probe_targets(backend)?.is_empty());
        Ok(())
    })??;
    let dump = ruleset(&node, backend)?;
    ensure!(
        !dump.to_lowercase().contains("ambit"),
        "host rules left behind:\n{dump}"
    );
    let seen = source_seen(&node, SocketAddr::new(pod_v6, APP_PORT), &inbound_v6)?;
    ensure!(
        seen == node_v6,
        "without host rules the node's connection came from {seen}"
    );
    Ok(())
}

/// `vpod` in the node, `eth0` in the pod, the pod routing everything (replies to the probe
/// address included) via the node.
fn veth(node: &Netns, pod: &Netns) -> anyhow::Result<()> {
    crate::harness::veth(
        node,
        "vpod",
        &["10.98.0.1/24", "fd00:98::1/64"],
        pod,
        &["10.98.0.2/24", "fd00:98::2/64"],
    )?;
    ip(&["-n", pod.name(), "route", "add", "default", "via", "10.98.0.1"])?;
    ip(&["-n", pod.name(), "-6", "route", "add", "default", "via", "fd00:98::1"])?;
    Ok(())
}

#[test]
fn nftables_probes_bypass_capture() -> anyhow::Result<()> {
    probes_bypass_capture(Backend::Nftables)
}

#[test]
fn iptables_probes_bypass_capture() -> anyhow::Result<()> {
    probes_bypass_capture(Backend::Iptables)
}

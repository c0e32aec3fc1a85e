//! Installing, re-installing, checking and removing the pod rules leaves exactly what it should
//! in the namespace's ruleset, with either backend.

use std::sync::mpsc;

use ambit_capture::{Backend, install, installed, remove};
use ambit_testkit::Netns;
use anyhow::{Context as _, ensure};

use crate::harness::{Namespaces, ruleset};

/// Lines that show our rules are present, and how often each must appear once installed.
fn markers(backend: Backend) -> Vec<(&'static str, usize)> {
    match backend {
        Backend::Nftables => vec![
            ("table inet ambit {", 1),
            ("type nat hook output priority", 1),
            ("type nat hook prerouting priority", 1),
            ("meta l4proto tcp redirect to :15001", 1),
            ("meta l4proto tcp redirect to :15006", 1),
            ("tcp dport 15008 return", 1),
            ("meta mark 0x00000539 return", 2),
            ("ip saddr 169.254.7.127 return", 1),
        ],
        // Both families: iptables-save, then ip6tables-save.
        _ => vec![
            (":AMBIT_PREROUTING - [0:0]", 2),
            (":AMBIT_OUTPUT - [0:0]", 2),
            ("-A PREROUTING -j AMBIT_PREROUTING", 2),
            ("-A OUTPUT -j AMBIT_OUTPUT", 2),
            ("-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001", 2),
            ("-A AMBIT_PREROUTING -p tcp -j REDIRECT --to-ports 15006", 2),
            ("-A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN", 2),
            ("-A AMBIT_OUTPUT -m mark --mark 0x539 -j RETURN", 2),
            ("-A AMBIT_PREROUTING -s 169.254.7.127/32 -j RETURN", 1),
            (
                "-A AMBIT_PREROUTING -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -j RETURN",
                1,
            ),
        ],
    }
}

fn assert_installed_once(pod: &Netns, backend: Backend) -> anyhow::Result<()> {
    let dump = ruleset(pod, backend)?;
    for (marker, count) in markers(backend) {
        let found = dump.lines().filter(|l| l.contains(marker)).count();
        ensure!(
            found == count,
            "{marker:?} appears {found} times, not {count}, in:\n{dump}"
        );
    }
    ensure!(
        installed(backend, &pod.path())?,
        "installed() says no, but the rules are:\n{dump}"
    );
    Ok(())
}

fn assert_nothing_of_ours(pod: &Netns, backend: Backend) -> anyhow::Result<()> {
    let dump = ruleset(pod, backend)?;
    ensure!(!dump.to_lowercase().contains("ambit"), "rules left behind:\n{dump}");
    ensure!(
        !installed(backend, &pod.path())?,
        "installed() says yes with nothing installed"
    );
    Ok(())
}

/// Empties one of our chains behind the crate's back.
fn damage(pod: &Netns, backend: Backend) -> anyhow::Result<()> {
    match backend {
        Backend::Nftables => pod.exec(&["nft", "flush", "chain", "inet", "ambit", "output"]),
        _ => pod.exec(&["iptables", "-t", "nat", "-F", "AMBIT_OUTPUT"]),
    }
    .map(drop)
}

fn install_check_remove(backend: Backend) -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new(&format!("rules-{backend}"))?;
    let pod = namespaces.add("pod")?;
    let path = pod.path();

    assert_nothing_of_ours(&pod, backend)?;
    remove(backend, &path).context("remove with nothing installed")?;

    install(backend, &path)?;
    assert_installed_once(&pod, backend).context("after the first install")?;
    install(backend, &path)?;
    assert_installed_once(&pod, backend).context("after installing twice")?;

    damage(&pod, backend)?;
    ensure!(!installed(backend, &path)?, "installed() missed an emptied chain");
    install(backend, &path)?;
    assert_installed_once(&pod, backend).context("after repairing")?;

    remove(backend, &path)?;
    assert_nothing_of_ours(&pod, backend).context("after remove")?;
    remove(backend, &path).context("removing twice")?;
    assert_nothing_of_ours(&pod, backend).context("after removing twice")?;
    Ok(())
}

#[test]
fn nftables_install_is_idempotent_and_remove_leaves_nothing() -> anyhow::Result<()> {
    install_check_remove(Backend::Nftables)
}

#[test]
fn iptables_install_is_idempotent_and_remove_leaves_nothing() -> anyhow::Result<()> {
    install_check_remove(Backend::Iptables)
}

/// CNI gives `/proc/PID/ns/net`-style paths, not names: install through one.
fn through_proc_path(backend: Backend) -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new(&format!("proc-{backend}"))?;
    let pod = namespaces.add("pod")?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let parked = pod.spawn_thread("parked-in-pod", move || {
        let _ = tid_tx.send(nix::unistd::gettid());
        let _ = done_rx.recv();
    })?;
    let tid = tid_rx.recv().context("the parked thread did not start")?;
    let path = std::path::PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));

    let result = (|| {
        install(backend, &path)?;
        assert_installed_once(&pod, backend)?;
        remove(backend, &path)?;
        assert_nothing_of_ours(&pod, backend)
    })();
    drop(done_tx);
    parked
        .join()
        .map_err(|_| anyhow::anyhow!("the parked thread panicked"))?;
    result.with_context(|| format!("through {}", path.display()))
}

#[test]
fn nftables_works_through_a_proc_namespace_path() -> anyhow::Result<()> {
    through_proc_path(Backend::Nftables)
}

#[test]
fn iptables_works_through_a_proc_namespace_path() -> anyhow::Result<()> {
    through_proc_path(Backend::Iptables)
}

#[test]
fn a_deleted_namespace_is_reported_as_gone() -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new("gone")?;
    let pod = namespaces.add("pod")?;
    crate::harness::ip(&["netns", "delete", pod.name()])?;
    for backend in [Backend::Nftables, Backend::Iptables] {
        for (what, result) in [
            ("install", install(backend, &pod.path())),
            ("remove", remove(backend, &pod.path())),
            ("installed", installed(backend, &pod.path()).map(drop)),
        ] {
            let err = result.err().with_context(|| format!("{backend} {what} succeeded"))?;
            ensure!(err.is_netns_gone(), "{backend} {what}: {err}");
            ensure!(err.to_string().contains(pod.name()), "{backend} {what}: {err}");
        }
    }
    Ok(())
}

/// Detection only reads; it still runs in a namespace of its own.
#[test]
fn detection_prefers_nftables_and_auto_means_detect() -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new("detect")?;
    let node = namespaces.add("node")?;
    let (detected, parsed) = node.try_run(|| (Backend::detect(), "auto".parse::<Backend>()))?;
    let detected = detected.context("detect on a machine with nft")?;
    ensure!(detected == Backend::Nftables, "detected {detected}");
    ensure!(
        parsed.context("\"auto\"")? == detected,
        "\"auto\" differs from detect()"
    );
    Ok(())
}

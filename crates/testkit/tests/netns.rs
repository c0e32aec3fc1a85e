//! Self-tests of the harness on real network namespaces. They need root and fail (never skip)
//! without it.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use ambit_testkit::{Network, Node, Pod, http_get, pcap_contains, wait_for_http_ok};
use anyhow::{Context as _, ensure};

/// Two nodes with two pods each: (network, [node1, node2], [n1a, n1b, n2a, n2b]).
fn two_by_two(name: &str) -> anyhow::Result<(Network, Vec<Node>, Vec<Pod>)> {
    let mut net = Network::new(name)?;
    let n1 = net.add_node("node1")?;
    let n2 = net.add_node("node2")?;
    let pods = vec![
        net.add_pod(&n1, "a")?,
        net.add_pod(&n1, "b")?,
        net.add_pod(&n2, "c")?,
        net.add_pod(&n2, "d")?,
    ];
    Ok((net, vec![n1, n2], pods))
}

/// Accepts one connection on `listener`, checks the peer address, echoes one message back.
fn serve_once(
    listener: TcpListener,
    expect_peer: std::net::Ipv4Addr,
) -> std::thread::JoinHandle<anyhow::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false)?;
        let (mut conn, peer) = listener.accept()?;
        ensure!(
            peer.ip() == expect_peer,
            "peer {peer}, expected {expect_peer} (no NAT on the path)"
        );
        let mut buf = vec![0; 64];
        let n = conn.read(&mut buf)?;
        buf.truncate(n);
        conn.write_all(&buf)?;
        Ok(buf)
    })
}

fn round_trip(from: &Pod, to: &Pod, port: u16, message: &[u8]) -> anyhow::Result<()> {
    let server = serve_once(to.tcp_listener(port)?, from.ip);
    let mut conn = from.tcp_connect(SocketAddr::from((to.ip, port)))?;
    conn.write_all(message)?;
    let mut back = vec![0; message.len()];
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.read_exact(&mut back)?;
    ensure!(back == message, "echo mismatch from {} to {}", from.name, to.name);
    let received = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(received == message);
    Ok(())
}

fn netns_names() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(out.status.success(), "ip netns list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[test]
fn pods_talk_across_and_within_nodes_in_both_directions() -> anyhow::Result<()> {
    let (_net, _nodes, pods) = two_by_two("xnode")?;
    for (from, to) in [(0, 2), (2, 0), (1, 3), (3, 1), (0, 1), (3, 2)] {
        round_trip(&pods[from], &pods[to], 7000, format!("hello {from}->{to}").as_bytes())
            .with_context(|| format!("{} -> {}", pods[from].name, pods[to].name))?;
    }
    Ok(())
}

#[test]
fn addresses_follow_the_plan() -> anyhow::Result<()> {
    let mut net = Network::new("addr")?;
    let n1 = net.add_node("node1")?;
    let n2 = net.add_node("node2")?;
    let p = net.add_pod(&n2, "web")?;
    assert_eq!((n1.index, n2.index), (1, 2));
    assert_eq!(n2.underlay_ip.to_string(), "172.30.0.2");
    assert_eq!(n2.pod_cidr.to_string(), "10.244.2.0/24");
    assert_eq!(p.ip.to_string(), "10.244.2.2");
    assert_eq!(p.node, "node2");
    assert!(
        p.netns.name().starts_with(net.prefix()) && p.netns.name().len() <= 32,
        "{}",
        p.netns.name()
    );
    assert_eq!(
        p.netns.path().to_string_lossy(),
        format!("/run/netns/{}", p.netns.name())
    );
    let routes = n1.netns.exec(&["ip", "route"])?;
    assert!(routes.contains("10.244.2.0/24 via 172.30.0.2"), "{routes}");
    assert_eq!(n1.netns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim(), "1");
    let err = net.add_pod(&Network::new("other")?.add_node("x")?, "y");
    assert!(err.is_err(), "a node of another network must be refused");
    Ok(())
}

#[test]
fn capture_on_node_eth0_sees_the_bytes() -> anyhow::Result<()> {
    let (_net, nodes, pods) = two_by_two("pcap")?;
    let capture = nodes[0].capture("eth0")?;
    round_trip(&pods[0], &pods[2], 7001, b"MARKER-plaintext-on-the-wire")?;
    let pcap = capture.stop()?;
    assert!(
        pcap_contains(&pcap, b"MARKER-plaintext-on-the-wire"),
        "{} bytes of pcap",
        pcap.len()
    );
    assert!(!pcap_contains(&pcap, b"never-sent-marker"));
    Ok(())
}

#[test]
fn spawned_processes_run_inside_the_namespace_and_die_with_the_network() -> anyhow::Result<()> {
    let (mut net, _nodes, pods) = two_by_two("spawn")?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ip -4 -o addr show dev eth0; sleep 600"]);
    let proc_ = net.spawn(&pods[1].netns, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc_.log_tail(5).contains(&pods[1].ip.to_string()) {
        ensure!(
            Instant::now() < deadline,
            "log never showed the pod IP: {}",
            proc_.log_tail(5)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(proc_.is_running());
    let pid = proc_.pid();
    drop(net);
    assert!(!proc_.is_running());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived the network"
    );
    Ok(())
}

#[test]
fn drop_deletes_every_namespace() -> anyhow::Result<()> {
    let (net, _nodes, _pods) = two_by_two("drop")?;
    let prefix = net.prefix().to_owned();
    assert_eq!(netns_names()?.iter().filter(|n| n.starts_with(&prefix)).count(), 7);
    drop(net);
    let left: Vec<_> = netns_names()?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn drop_deletes_every_namespace_after_a_panic() -> anyhow::Result<()> {
    static PREFIX: Mutex<String> = Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let (mut net, _nodes, pods) = two_by_two("panic").unwrap_or_else(|e| panic!("setup failed: {e:#}"));
        *PREFIX.lock().unwrap_or_else(|p| p.into_inner()) = net.prefix().to_owned();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        net.spawn(&pods[0].netns, cmd)
            .unwrap_or_else(|e| panic!("spawn failed: {e:#}"));
        panic!("deliberate panic inside the test");
    });
    assert!(result.is_err());
    let prefix = PREFIX.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(!prefix.is_empty(), "the network was never created");
    let left: Vec<_> = netns_names()?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "left behind after panic: {left:?}");
    // The harness keeps logs after a panic for debugging; this panic was deliberate.
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir()
            .join("ambit-testkit")
            .join(prefix.trim_end_matches('-')),
    );
    Ok(())
}

#[test]
fn http_client_reads_status_and_body() -> anyhow::Result<()> {
    let mut net = Network::new("http")?;
    let node = net.add_node("node1")?;
    let pod = net.add_pod(&node, "web")?;
    let listener = pod.tcp_listener(15021)?;
    listener.set_nonblocking(false)?;
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            // Not ready for the first two polls, then ready.
            let reply: &[u8] = if i < 2 {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready"
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nready\r\n0\r\n\r\n"
            };
            let _ = conn.write_all(reply);
        }
    });
    let addr = SocketAddr::from((pod.ip, 15021));
    assert_eq!(
        http_get(&node.netns, addr, "/healthz/ready")?,
        (503, "not ready".to_owned())
    );
    wait_for_http_ok(&node.netns, addr, "/healthz/ready", Duration::from_secs(5))?;
    assert_eq!(http_get(&pod.netns, addr, "/")?, (200, "ready".to_owned()));
    let closed = wait_for_http_ok(
        &pod.netns,
        SocketAddr::from((pod.ip, 1)),
        "/",
        Duration::from_millis(300),
    );
    assert!(closed.is_err_and(|e| e.to_string().contains("not 200")));
    Ok(())
}

#[test]
fn netns_run_propagates_panics_and_errors() -> anyhow::Result<()> {
    let mut net = Network::new("run")?;
    let node = net.add_node("node1")?;
    let value = node.netns.run(|| 41 + 1);
    assert_eq!(value, 42);
    let panicked = std::panic::catch_unwind(|| node.netns.run(|| panic!("inner")));
    assert!(panicked.is_err());
    assert!(
        ambit_testkit::Netns::from_name("amb-does-not-exist")
            .try_run(|| ())
            .is_err()
    );
    assert!(node.netns.exec(&["false"]).is_err());
    Ok(())
}

#[test]
fn namespaces_of_dead_runs_are_removed_by_the_next_network() -> anyhow::Result<()> {
    // A pid above pid_max cannot be alive: this stands in for a run that was SIGKILLed.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?.trim().parse()?;
    let stale = format!("amb-stale-{}-0-ul", pid_max + 1);
    let out = Command::new("ip").args(["netns", "add", &stale]).output()?;
    ensure!(
        out.status.success(),
        "ip netns add {stale}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _net = Network::new("fresh")?;
    assert!(!netns_names()?.contains(&stale), "{stale} survived");
    Ok(())
}

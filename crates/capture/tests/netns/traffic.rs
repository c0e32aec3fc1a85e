//! What the rules do to real connections: a "pod" and a "peer" namespace joined by a veth, the
//! pod with stand-ins for ztunnel's listeners. Outbound TCP lands on 15001 and inbound on 15006
//! (SO_ORIGINAL_DST still naming the real destination); ztunnel's marked sockets, loopback,
//! HBONE on 15008 and UDP pass untouched; after removal everything flows directly again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ambit_capture::{Backend, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, ZTUNNEL_MARK, install, remove};
use anyhow::{Context as _, ensure};

use crate::harness::{Namespaces, accept_from, assert_idle, connect, listen, original_destination, udp, veth};

const APP_PORT: u16 = 8080;
const PEER_PORT: u16 = 9000;

/// One address family's view of the veth.
struct Addresses {
    pod: IpAddr,
    peer: IpAddr,
    /// Where ztunnel's outbound listener sits (redirected local traffic goes to loopback).
    loopback: IpAddr,
    any: IpAddr,
}

const V4: Addresses = Addresses {
    pod: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
    peer: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)),
    loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
    any: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
};

const V6: Addresses = Addresses {
    pod: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1)),
    peer: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2)),
    loopback: IpAddr::V6(Ipv6Addr::LOCALHOST),
    any: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
};

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn redirects_and_exempts(backend: Backend, family: &str, a: &Addresses) -> anyhow::Result<()> {
    let mut namespaces = Namespaces::new(&format!("traffic-{backend}-{family}"))?;
    let pod = namespaces.add("pod")?;
    let peer = namespaces.add("peer")?;
    veth(
        &pod,
        "eth0",
        &["10.99.0.1/24", "fd00:99::1/64"],
        &peer,
        &["10.99.0.2/24", "fd00:99::2/64"],
    )?;

    let outbound = listen(&pod, at(a.loopback, OUTBOUND_PORT))?;
    let inbound = listen(&pod, at(a.any, INBOUND_PLAINTEXT_PORT))?;
    let hbone = listen(&pod, at(a.any, HBONE_PORT))?;
    let app = listen(&pod, at(a.any, APP_PORT))?;
    let peer_app = listen(&peer, at(a.any, PEER_PORT))?;
    let peer_udp = udp(&peer, at(a.peer, PEER_PORT))?;
    peer_udp.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;

    install(backend, &pod.path())?;

    // The pod's own connection goes to ztunnel, which can still see where it was headed.
    let client = connect(&pod, at(a.peer, PEER_PORT), None)?;
    let captured = accept_from(&outbound, &client).context("outbound TCP must land on 15001")?;
    ensure!(original_destination(&captured)? == at(a.peer, PEER_PORT));
    assert_idle(&peer_app)?;

    // ztunnel's own sockets (mark 0x539) go out as they are.
    let client = connect(&pod, at(a.peer, PEER_PORT), Some(ZTUNNEL_MARK))?;
    accept_from(&peer_app, &client).context("marked TCP must reach the peer directly")?;
    assert_idle(&outbound)?;

    // Loopback inside the pod is not captured, in either direction.
    let client = connect(&pod, at(a.loopback, APP_PORT), None)?;
    accept_from(&app, &client).context("loopback TCP must reach the app")?;
    assert_idle(&inbound)?;

    // A connection arriving at the pod goes to ztunnel's plaintext listener.
    let client = connect(&peer, at(a.pod, APP_PORT), None)?;
    let captured = accept_from(&inbound, &client).context("inbound TCP must land on 15006")?;
    ensure!(original_destination(&captured)? == at(a.pod, APP_PORT));
    assert_idle(&app)?;

    // HBONE is for ztunnel's 15008 itself.
    let client = connect(&peer, at(a.pod, HBONE_PORT), None)?;
    accept_from(&hbone, &client).context("HBONE must reach 15008 directly")?;
    assert_idle(&inbound)?;

    // UDP is left alone.
    let sender = pod.try_run(|| std::net::UdpSocket::bind(at(a.any, 0)))??;
    sender.send_to(b"udp", at(a.peer, PEER_PORT))?;
    let mut buf = [0; 8];
    let (n, _) = peer_udp
        .recv_from(&mut buf)
        .context("UDP must reach the peer directly")?;
    ensure!(&buf[..n] == b"udp");

    remove(backend, &pod.path())?;

    let client = connect(&pod, at(a.peer, PEER_PORT), None)?;
    accept_from(&peer_app, &client).context("after remove, outbound TCP flows directly")?;
    assert_idle(&outbound)?;
    let client = connect(&peer, at(a.pod, APP_PORT), None)?;
    accept_from(&app, &client).context("after remove, inbound TCP flows directly")?;
    assert_idle(&inbound)?;
    Ok(())
}

#[test]
fn nftables_redirects_ipv4() -> anyhow::Result<()> {
    redirects_and_exempts(Backend::Nftables, "v4", &V4)
}

#[test]
fn nftables_redirects_ipv6() -> anyhow::Result<()> {
    redirects_and_exempts(Backend::Nftables, "v6", &V6)
}

#[test]
fn iptables_redirects_ipv4() -> anyhow::Result<()> {
    redirects_and_exempts(Backend::Iptables, "v4", &V4)
}

#[test]
fn iptables_redirects_ipv6() -> anyhow::Result<()> {
    redirects_and_exempts(Backend::Iptables, "v6", &V6)
}

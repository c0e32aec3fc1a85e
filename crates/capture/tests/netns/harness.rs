//! Network namespaces for these tests, `ambitcap-<test>-<role>-<pid>`, deleted by `Drop` also
//! when a test panics; plus sockets created inside them. Everything happens inside namespaces
//! made here: the host's own namespace is never changed.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use ambit_testkit::{NETNS_DIR, Netns};
use anyhow::{Context as _, bail, ensure};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const PREFIX: &str = "ambitcap-";
const TIMEOUT: Duration = Duration::from_secs(5);

/// The namespaces of one test, deleted (in reverse order) on drop.
pub struct Namespaces {
    test: String,
    created: Vec<Netns>,
}

impl Namespaces {
    /// Fails, never skips, when not root: these tests are the only proof the rules work.
    pub fn new(test: &str) -> anyhow::Result<Namespaces> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "ambit-capture's namespace tests program nftables/iptables in network namespaces they \
             create and must run as root (euid is {}); run them as root, e.g. `sudo -E cargo \
             nextest run -p ambit-capture`",
            nix::unistd::geteuid()
        );
        remove_stale();
        Ok(Namespaces {
            test: test.to_owned(),
            created: Vec::new(),
        })
    }

    /// Creates namespace `ambitcap-<test>-<role>-<pid>` with `lo` up.
    pub fn add(&mut self, role: &str) -> anyhow::Result<Netns> {
        let netns = Netns::from_name(format!("{PREFIX}{}-{role}-{}", self.test, std::process::id()));
        // Registered first, so that a failure half-way still deletes it.
        self.created.push(netns.clone());
        ip(&["netns", "add", netns.name()])?;
        ip(&["-n", netns.name(), "link", "set", "lo", "up"])?;
        // No duplicate address detection on links made later: their addresses work at once.
        ambit_testkit::write_sysctl(&netns, "net/ipv6/conf/default/accept_dad", "0")?;
        Ok(netns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for netns in self.created.iter().rev() {
            if netns.path().exists()
                && let Err(e) = ip(&["netns", "delete", netns.name()])
            {
                eprintln!("cannot delete test namespace {netns}: {e:#}");
            }
        }
    }
}

/// Deletes `ambitcap-…-<pid>` namespaces whose process is gone (a run that was killed).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.rsplit('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left behind by dead process {pid}");
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// Runs `ip ARGS…` (always with a namespace: `-n NAME` or `netns …`).
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    ensure!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Joins `a` and `b` with a veth pair (`a_link` in `a`, `eth0` in `b`) and gives both ends their
/// addresses (`10.x.y.z/24`, `fd00:…/64`; no duplicate address detection, so they work at once).
pub fn veth(a: &Netns, a_link: &str, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> anyhow::Result<()> {
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        a_link,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ])?;
    for (netns, link, addrs) in [(a, a_link, a_addrs), (b, "eth0", b_addrs)] {
        for addr in addrs {
            ip(&["-n", netns.name(), "addr", "add", addr, "dev", link, "nodad"])?;
        }
        ip(&["-n", netns.name(), "link", "set", link, "up"])?;
    }
    // IPv6 ignores a link until the kernel's link watcher has seen its carrier (up to a second
    // later); it then gives the link its fe80:: address. Wait for that, or the first neighbour
    // solicitation is lost and the first connection takes a SYN retransmit (1 s) longer.
    let deadline = Instant::now() + TIMEOUT;
    for (netns, link) in [(a, a_link), (b, "eth0")] {
        while ip(&["-n", netns.name(), "-6", "addr", "show", "dev", link, "scope", "link"])?
            .trim()
            .is_empty()
        {
            ensure!(
                Instant::now() < deadline,
                "{link} in {netns} got no IPv6 link-local address"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// A non-blocking listener bound to `addr` inside `netns` (IPv6 ones take only IPv6).
pub fn listen(netns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    netns
        .try_run(|| -> std::io::Result<TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(64)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })?
        .with_context(|| format!("cannot listen on {addr} in {netns}"))
}

/// A TCP connection to `to` opened from inside `netns`, its socket marked with `mark` if given.
pub fn connect(netns: &Netns, to: SocketAddr, mark: Option<u32>) -> anyhow::Result<TcpStream> {
    netns
        .try_run(|| -> std::io::Result<TcpStream> {
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.connect_timeout(&to.into(), TIMEOUT)?;
            Ok(socket.into())
        })?
        .with_context(|| format!("cannot connect from {netns} to {to} (mark {mark:?})"))
}

/// Accepts the connection `client` opened, on `listener`: it must be there within the timeout,
/// and be the only one queued.
pub fn accept_from(listener: &TcpListener, client: &TcpStream) -> anyhow::Result<TcpStream> {
    let (stream, peer) = accept(listener)?;
    let expected = client.local_addr()?;
    ensure!(
        peer == expected,
        "listener {} accepted a connection from {peer}, expected {expected}",
        listener.local_addr()?
    );
    assert_idle(listener)?;
    Ok(stream)
}

/// Accepts the next connection on `listener` within the timeout.
pub fn accept(listener: &TcpListener) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok(accepted) => return Ok(accepted),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                bail!(
                    "no connection reached listener {} within {TIMEOUT:?}",
                    listener.local_addr()?
                )
            }
            Err(e) => return Err(e).context("accept failed"),
        }
    }
}

/// `listener` has no connection waiting.
pub fn assert_idle(listener: &TcpListener) -> anyhow::Result<()> {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Ok((_, peer)) => bail!(
            "listener {} unexpectedly got a connection from {peer}",
            listener.local_addr()?
        ),
        Err(e) => Err(e).context("accept failed"),
    }
}

/// The destination the connection had before it was redirected (SO_ORIGINAL_DST).
pub fn original_destination(stream: &TcpStream) -> anyhow::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    }
    .context("SO_ORIGINAL_DST")?;
    addr.as_socket().context("SO_ORIGINAL_DST is not an IP address")
}

/// A UDP socket bound to `addr` inside `netns`.
pub fn udp(netns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    netns
        .try_run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind UDP {addr} in {netns}"))
}

/// `nft list ruleset` (nftables) or both families' `*tables-save` (iptables) inside `netns`.
pub fn ruleset(netns: &Netns, backend: ambit_capture::Backend) -> anyhow::Result<String> {
    match backend {
        ambit_capture::Backend::Nftables => netns.exec(&["nft", "list", "ruleset"]),
        ambit_capture::Backend::Iptables => Ok(netns.exec(&["iptables-save"])? + &netns.exec(&["ip6tables-save"])?),
        other => bail!("no ruleset dump for backend {other}"),
    }
}

/// The set of `ip`s, for order-free comparisons.
pub fn ips<I: IntoIterator<Item = std::net::IpAddr>>(ips: I) -> BTreeSet<std::net::IpAddr> {
    ips.into_iter().collect()
}

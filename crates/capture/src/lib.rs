//! The in-pod traffic redirection that puts an enrolled pod's TCP through ztunnel: a table of our
//! own inside the pod's network namespace (nftables, or iptables where nft is missing), plus the
//! node-side rule that lets kubelet's health probes past it. It writes and removes rules; the
//! listeners they redirect to are ztunnel's, and deciding which pods to enroll is the agent's.
//!
//! Pod side, in the namespace at a path (CNI's `/proc/PID/ns/net`, `/var/run/netns/…`):
//! [`install`], [`remove`], [`installed`]. Node side, in the calling process's own namespace:
//! [`install_host`], [`add_probe_target`], [`remove_probe_target`], [`probe_targets`],
//! [`remove_host`].

mod backend;
mod command;
mod error;
mod host;
mod iptables;
mod nftables;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

pub use backend::Backend;
pub use error::{Error, Result};
pub use host::{add_probe_target, install_host, probe_targets, remove_host, remove_probe_target};

/// Mark on ztunnel's own sockets (0x539 = 1337, the value Istio's in-pod rules exempt), so that
/// its connections out of the pod are not captured again.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// ztunnel's outbound listener inside the pod (Istio: 15001, on 127.0.0.1).
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's inbound plaintext listener inside the pod (Istio: 15006).
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's inbound HBONE listener inside the pod (Istio: 15008); HBONE is never redirected.
pub const HBONE_PORT: u16 = 15008;
/// Source address the node gives kubelet's probes to enrolled pods, which the pod exempts from
/// capture (Istio's `169.254.7.127`, a link-local address no pod owns).
pub const PROBE_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// The IPv6 probe source, Istio's `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`.
pub const PROBE_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff);

/// Replaces our capture rules in the pod namespace at `netns`, atomically and idempotently:
/// after it returns, exactly one copy of the current rules is in place, and at no point in
/// between was the pod's traffic uncaptured (see the backend modules for how).
///
/// A missing `netns` is [`Error::is_netns_gone`].
pub fn install(backend: Backend, netns: &Path) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::install(netns),
        Backend::Iptables => iptables::install(netns),
    }
}

/// Removes every rule, chain and table of ours from the pod namespace at `netns`; succeeds when
/// none is there. A missing `netns` is [`Error::is_netns_gone`] (for the caller: already gone).
pub fn remove(backend: Backend, netns: &Path) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::remove(netns),
        Backend::Iptables => iptables::remove(netns),
    }
}

/// Whether exactly the rules [`install`] writes are in place in the pod namespace at `netns`
/// (CNI CHECK): `false` when they are absent, incomplete, altered or duplicated.
pub fn installed(backend: Backend, netns: &Path) -> Result<bool> {
    match backend {
        Backend::Nftables => nftables::installed(netns),
        Backend::Iptables => iptables::installed(netns),
    }
}

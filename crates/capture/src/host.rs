//! The node side of kubelet's health probes. kubelet probes pods from the node, and an enrolled
//! pod would redirect those connections into ztunnel; so the node rewrites the source of TCP it
//! originates towards enrolled pods to the probe address ([`crate::PROBE_SOURCE_V4`],
//! [`crate::PROBE_SOURCE_V6`]), which the pod's rules let through. Every function here acts on
//! the calling thread's network namespace (the agent runs in the node's).

use std::net::IpAddr;

use crate::{Backend, Result, iptables, nftables};

/// Creates the node's probe rules if missing, and rewrites them if present, keeping the probe
/// targets already added (an agent restart does not open a window where probes are captured).
pub fn install_host(backend: Backend) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::install_host(),
        Backend::Iptables => iptables::install_host(),
    }
}

/// Removes the node's probe rules and targets; succeeds when none is there.
pub fn remove_host(backend: Backend) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::remove_host(),
        Backend::Iptables => iptables::remove_host(),
    }
}

/// Makes the node's probes to `ip` (an enrolled pod's address) bypass the pod's capture.
/// Idempotent; needs [`install_host`] first.
pub fn add_probe_target(backend: Backend, ip: IpAddr) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::add_probe_target(ip),
        Backend::Iptables => iptables::add_probe_target(ip),
    }
}

/// Stops treating `ip` as an enrolled pod. Idempotent, also without [`install_host`].
pub fn remove_probe_target(backend: Backend, ip: IpAddr) -> Result<()> {
    match backend {
        Backend::Nftables => nftables::remove_probe_target(ip),
        Backend::Iptables => iptables::remove_probe_target(ip),
    }
}

/// The addresses currently added, for reconciling after a restart. Empty without
/// [`install_host`].
pub fn probe_targets(backend: Backend) -> Result<Vec<IpAddr>> {
    match backend {
        Backend::Nftables => nftables::probe_targets(),
        Backend::Iptables => iptables::probe_targets(),
    }
}

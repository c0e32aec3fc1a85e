//! Finding the network namespace of a pod the plugin never reported: one that started before
//! Ambit was installed on the node. Container runtimes pin each pod's namespace under
//! `/var/run/netns` (containerd and CRI-O: `cni-<uuid>`); a namespace joined to this node by a
//! link (the pod's veth) has a namespace id here, which keeps other nodes' pods with the same
//! addresses out. The pod is the one whose interfaces carry its IP.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

/// Where `ip netns` and container runtimes pin network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

#[derive(Deserialize)]
struct NamedNetns {
    name: String,
    /// Present when the namespace has an id in the current one (a link joins them).
    id: Option<i64>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    addr_info: Vec<Address>,
}

#[derive(Deserialize)]
struct Address {
    local: Option<IpAddr>,
}

fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e} (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `ip -j` prints nothing at all for an empty list.
    let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        b"[]".as_slice()
    } else {
        &out.stdout
    };
    serde_json::from_slice(text).map_err(|e| format!("`ip {}` printed unexpected JSON: {e}", args.join(" ")))
}

/// The pinned namespace, linked to this node, one of whose interfaces has one of `ips`.
pub fn find_netns(ips: &[IpAddr]) -> Result<Option<PathBuf>, String> {
    if ips.is_empty() {
        return Ok(None);
    }
    let named: Vec<NamedNetns> = ip_json(&["-j", "netns", "list"])?;
    for netns in named.into_iter().filter(|n| n.id.is_some()) {
        let links: Vec<Link> = match ip_json(&["-j", "-n", &netns.name, "address", "show"]) {
            Ok(l) => l,
            // Gone meanwhile, or not ours to read: not the pod.
            Err(e) => {
                tracing::debug!(netns = %netns.name, error = %e, "skipped while looking for a pod's namespace");
                continue;
            }
        };
        let has_ip = links
            .iter()
            .flat_map(|l| &l.addr_info)
            .filter_map(|a| a.local)
            .any(|local| ips.contains(&local));
        if has_ip {
            return Ok(Some(Path::new(NETNS_DIR).join(&netns.name)));
        }
    }
    Ok(None)
}

//! Ambit's network-namespace test harness: a small cluster on one Linux machine, "nodes" and
//! "pods" as network namespaces joined by veths and bridges, plus the tools tests need around
//! it (in-pod capture rules, tcpdump captures, a tiny HTTP client, running real ztunnels).
//!
//! It needs root and iproute2 (`nft`, `tcpdump` for the features that use them) and fails loudly
//! without them. It never changes the host's own namespace: every link is created inside a
//! namespace this crate made, and [`Network`]'s `Drop` deletes them all (also on panic; call
//! [`cleanup_on_interrupt`] in binaries to cover Ctrl-C).

mod cleanup;
pub mod cni;
pub mod cni_agent;
mod command;
mod http;
pub mod mesh;
mod netns;
mod network;
mod pcap;
mod process;
mod redirect;

pub use cleanup::{cleanup_on_interrupt, set_interrupt_exit_code};
pub use http::{http_get, wait_for_http_ok};
pub use ipnet::Ipv4Net;
pub use netns::{NETNS_DIR, Netns};
pub use network::{Network, Node, Pod, write_sysctl};
pub use pcap::{Capture, pcap_contains, pcap_tls_records};
pub use process::ProcessHandle;
pub use redirect::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, ZTUNNEL_MARK};

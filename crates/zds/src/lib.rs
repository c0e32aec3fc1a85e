//! ZDS: the node agent hands each enrolled pod's network namespace to ztunnel, wire-compatible
//! with Istio's ztunnel and istio-cni node agent.
//!
//! This crate owns the protocol: the `SOCK_SEQPACKET` unix socket, one protobuf message per
//! packet, the netns fd as `SCM_RIGHTS`, the hello and one ack per request. It does not own which
//! pods to send, which ztunnel connection gets them, or what ztunnel does with a namespace.
//!
//! The conversation: ztunnel ([`ZdsClient`]) connects and sends `ZdsHello{V1}`; the agent
//! ([`ZdsConnection`]) sends the snapshot (an add per current pod, or a keep for a pod whose netns
//! it no longer holds), then snapshot-sent, then adds and deletes as pods come and go. ztunnel
//! answers every request with exactly one ack, whose error string is empty on success.

mod client;
mod error;
mod netns;
mod server;
mod socket;
mod wire;

use std::time::Duration;

pub use ambit_proto::istio::workload::zds::{Version, WorkloadInfo};
pub use client::ZdsClient;
pub use error::{ProtocolError, ZdsError};
pub use server::{ZdsConnection, ZdsListener};
pub use wire::{ZdsRequest, decode_ack, decode_hello, decode_request};

/// Our receive buffer for one packet. Generous on purpose: a longer packet is an error
/// ([`ProtocolError::Truncated`]), never silently cut.
pub const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// The longest packet we send. Istio's ztunnel (`src/inpod/linux/protocol.rs`) and istio-cni
/// (`cni/pkg/nodeagent/ztunnelserver.go`) both read into a 1024-byte buffer and reject anything
/// longer as truncated, so a longer message would not reach an Istio peer.
pub const MAX_SEND_BYTES: usize = 1024;

/// How long the agent waits for the hello and for each ack, and the default of
/// [`ZdsConnection::set_timeout`]: Istio's `readWriteDeadline` in `ztunnelserver.go`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

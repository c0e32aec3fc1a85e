//! Errors: [`ZdsError`] for everything the socket can do wrong, [`ProtocolError`] for what a peer's
//! packet got wrong. Messages name the socket path, pod uid or field at hand, never repeat a source.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::libc;

/// What was wrong with a packet from the peer. Pure data, so [`crate::decode_request`] can return
/// it; its text is what ztunnel sends back in the nack.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The packet was longer than our receive buffer (`MSG_TRUNC`); the rest was discarded.
    #[error("packet longer than the {limit}-byte receive buffer (MSG_TRUNC)")]
    Truncated {
        /// Our receive buffer size, [`crate::RECV_BUFFER_BYTES`].
        limit: usize,
    },
    /// The ancillary data did not fit (`MSG_CTRUNC`); the kernel dropped file descriptors.
    #[error("ancillary data truncated (MSG_CTRUNC); file descriptors were dropped")]
    ControlTruncated,
    /// The bytes are not a protobuf `message`.
    #[error("packet is not a valid {message} protobuf: {reason}")]
    Undecodable {
        /// The protobuf message expected.
        message: &'static str,
        /// What prost reported.
        reason: prost::DecodeError,
    },
    /// The `payload` oneof is unset, or holds a type we do not know (a newer peer's).
    #[error("{message} has no payload this version understands")]
    EmptyPayload {
        /// The protobuf message received.
        message: &'static str,
    },
    /// A request names no pod.
    #[error("{message} has an empty uid")]
    EmptyUid {
        /// The protobuf message received.
        message: &'static str,
    },
    /// An `AddWorkload` without `workload_info`; Istio's ztunnel rejects these too.
    #[error("AddWorkload for pod {uid} has no workload_info")]
    MissingWorkloadInfo {
        /// The pod's uid.
        uid: String,
    },
    /// An `AddWorkload` without the netns file descriptor.
    #[error("AddWorkload for pod {uid} carries no netns file descriptor (SCM_RIGHTS)")]
    MissingNetns {
        /// The pod's uid.
        uid: String,
    },
    /// An `AddWorkload` with more than one file descriptor; all were closed.
    #[error("AddWorkload for pod {uid} carries {count} file descriptors; exactly one netns is expected")]
    TooManyFds {
        /// The pod's uid.
        uid: String,
        /// How many arrived.
        count: usize,
    },
    /// File descriptors on a message that takes none; they were closed.
    #[error("{message} carries {count} file descriptors; only AddWorkload carries one")]
    UnexpectedFds {
        /// The protobuf message received.
        message: &'static str,
        /// How many arrived.
        count: usize,
    },
    /// The descriptor sent with an `AddWorkload` is not a network namespace; it was closed.
    #[error("the file descriptor sent for pod {uid} is not a network namespace: {reason}")]
    NotNetns {
        /// The pod's uid.
        uid: String,
        /// What it is instead, or why that could not be checked.
        reason: String,
    },
    /// A hello with a version other than V1.
    #[error("ZdsHello version {version} is not supported; only V1 (1) is")]
    UnsupportedVersion {
        /// The version number received.
        version: i32,
    },
    /// ztunnel sent something while the agent had asked nothing.
    #[error("unsolicited packet; ztunnel only answers requests")]
    Unsolicited,
}

/// Why a ZDS operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    /// The agent could not listen on its socket.
    #[error("cannot listen on the ZDS socket {}: {reason}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Which step failed and what to check.
        reason: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// ztunnel could not connect to the agent's socket. Retry with backoff, as Istio's ztunnel does.
    #[error(
        "cannot connect to the ZDS socket {}; check that the node agent is running and listening there",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A system call on an established socket failed.
    #[error("I/O error on the ZDS socket {} while {op}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection (end of file, `EPIPE`, `ECONNRESET`).
    #[error("the peer on the ZDS socket {} closed the connection", path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The peer sent no hello or ack in time. Acks can no longer be matched to requests on this
    /// connection: close it.
    #[error("no {what} from ztunnel on the ZDS socket {} within {after:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// What we waited for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// ztunnel answered a request with an error. The connection stays usable.
    #[error("ztunnel on {} refused {request}{}: {error}", path.display(), for_pod(uid.as_deref()))]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// `add`, `keep`, `del` or `snapshot-sent`.
        request: &'static str,
        /// The pod, for add, keep and del.
        uid: Option<String>,
        /// The error ztunnel sent.
        error: String,
    },
    /// The peer sent a packet we cannot accept. Framing is intact (one message per packet), so
    /// the connection stays usable: ztunnel must still nack the request (see [`crate::ZdsClient`]).
    #[error("bad packet from the peer on the ZDS socket {}: {problem}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        problem: ProtocolError,
    },
    /// A message we were about to send is longer than Istio's peers can receive.
    #[error(
        "{what} is {len} bytes encoded, over the {limit}-byte packet limit of Istio's ZDS peers; not sent on {}",
        path.display()
    )]
    TooLarge {
        /// The socket path.
        path: PathBuf,
        /// What we were sending.
        what: String,
        /// Its encoded size.
        len: usize,
        /// [`crate::MAX_SEND_BYTES`].
        limit: usize,
    },
    /// The API was used out of protocol order (see `problem`); nothing was sent.
    #[error("out-of-order use of the ZDS connection on {}: {problem}", path.display())]
    OutOfOrder {
        /// The socket path.
        path: PathBuf,
        /// What was out of order.
        problem: &'static str,
    },
}

fn for_pod(uid: Option<&str>) -> String {
    uid.map(|uid| format!(" for pod {uid}")).unwrap_or_default()
}

impl ZdsError {
    /// True if the peer went away; reconnect (ztunnel) or forget the connection (agent).
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }

    /// True if the peer did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The error ztunnel nacked a request with, if that is what happened.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// What was wrong with the peer's packet, if that is what happened.
    pub fn protocol_error(&self) -> Option<&ProtocolError> {
        match self {
            Self::Protocol { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        // A vanished peer is not an I/O failure on our side.
        match source.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED | libc::ENOTCONN) => {
                Self::Closed { path: path.to_owned() }
            }
            _ => Self::Io {
                path: path.to_owned(),
                op,
                source,
            },
        }
    }

    pub(crate) fn protocol(path: &Path, problem: ProtocolError) -> Self {
        Self::Protocol {
            path: path.to_owned(),
            problem,
        }
    }

    pub(crate) fn out_of_order(path: &Path, problem: &'static str) -> Self {
        Self::OutOfOrder {
            path: path.to_owned(),
            problem,
        }
    }
}

//! The node agent's side: listen for ztunnel, read its hello, send each request and await its ack.
//! Which pods to send and to which connection is the agent's business.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_proto::istio::workload::zds::workload_request::Payload;
use ambit_proto::istio::workload::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo};
use tracing::debug;

use crate::socket::{Packet, Received, SeqPacket, Wake};
use crate::wire::{decode_ack, decode_hello, encode_request};
use crate::{DEFAULT_TIMEOUT, MAX_SEND_BYTES, ProtocolError, RECV_BUFFER_BYTES, ZdsError};

/// The agent's listening socket.
#[derive(Debug)]
pub struct ZdsListener {
    socket: SeqPacket,
    path: PathBuf,
}

impl ZdsListener {
    /// Listens on `path` with mode 0600, first removing a socket file left by an earlier run. The
    /// directory must exist.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like tokio's own listeners.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ZdsError> {
        let path = path.as_ref().to_owned();
        match SeqPacket::listen(&path) {
            Ok(socket) => Ok(Self { socket, path }),
            Err((reason, source)) => Err(ZdsError::Listen { path, reason, source }),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next ztunnel to connect. Cancel-safe. An error concerns that one connection
    /// attempt (or descriptor exhaustion); keep accepting, as istio-cni does, at a bounded rate.
    pub async fn accept(&self) -> Result<ZdsConnection, ZdsError> {
        let socket = self
            .socket
            .accept()
            .await
            .map_err(|e| ZdsError::io(&self.path, "accepting a connection", e))?;
        Ok(ZdsConnection {
            socket,
            path: self.path.clone(),
            buf: vec![0; RECV_BUFFER_BYTES].into_boxed_slice(),
            timeout: DEFAULT_TIMEOUT,
            phase: Phase::Hello,
            awaiting_ack: false,
        })
    }
}

/// Where a connection is in the conversation; requests out of this order are refused locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Hello,
    Snapshot,
    Live,
}

/// One connected ztunnel, from the agent's side.
///
/// Requests go one at a time, each awaiting its ack (the protocol matches acks to requests only by
/// order), so one task should own the connection and take commands from a channel, selecting on
/// [`ZdsConnection::closed`] while idle. Call [`hello`](Self::hello), then send the snapshot
/// ([`add`](Self::add) or [`keep`](Self::keep) per current pod, then
/// [`snapshot_sent`](Self::snapshot_sent)), then adds and deletes as pods change.
///
/// The request methods are not cancel-safe: dropping one before its ack arrives (or a
/// [`ZdsError::Timeout`]) leaves an ack in flight, and every later request fails with
/// [`ZdsError::OutOfOrder`]. Close the connection then; ztunnel reconnects and gets a new snapshot.
pub struct ZdsConnection {
    socket: SeqPacket,
    path: PathBuf,
    buf: Box<[u8]>,
    timeout: Duration,
    phase: Phase,
    awaiting_ack: bool,
}

impl fmt::Debug for ZdsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZdsConnection")
            .field("path", &self.path)
            .field("phase", &self.phase)
            .field("awaiting_ack", &self.awaiting_ack)
            .finish_non_exhaustive()
    }
}

impl ZdsConnection {
    /// How long to wait for the hello and for each ack; [`DEFAULT_TIMEOUT`] unless set.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Reads ztunnel's hello, which must come first and say V1.
    pub async fn hello(&mut self) -> Result<Version, ZdsError> {
        if self.phase != Phase::Hello {
            return Err(ZdsError::out_of_order(&self.path, "hello() was already called"));
        }
        let packet = self.receive("hello").await?;
        let version = self
            .decode(&packet, decode_hello)
            .map_err(|problem| ZdsError::protocol(&self.path, problem))?;
        self.phase = Phase::Snapshot;
        Ok(version)
    }

    /// Hands pod `uid` and its network namespace to ztunnel; `netns` goes as `SCM_RIGHTS` and
    /// stays open on our side.
    pub async fn add(&mut self, uid: &str, info: WorkloadInfo, netns: BorrowedFd<'_>) -> Result<(), ZdsError> {
        self.after_hello()?;
        let payload = Payload::Add(AddWorkload {
            uid: uid.to_owned(),
            workload_info: Some(info),
        });
        self.request("add", Some(uid), payload, Some(netns)).await
    }

    /// Tells ztunnel to keep pod `uid` if it already runs it: for a snapshot entry whose netns
    /// the agent no longer holds. Only before [`snapshot_sent`](Self::snapshot_sent): Istio's
    /// ztunnel treats a later keep as a protocol error and disconnects.
    pub async fn keep(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.after_hello()?;
        if self.phase != Phase::Snapshot {
            return Err(ZdsError::out_of_order(
                &self.path,
                "keep() after snapshot_sent(); Istio's ztunnel disconnects on that",
            ));
        }
        let payload = Payload::Keep(KeepWorkload { uid: uid.to_owned() });
        self.request("keep", Some(uid), payload, None).await
    }

    /// Tells ztunnel to stop proxying pod `uid`; ztunnel acks even if it has no such pod.
    pub async fn del(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.after_hello()?;
        let payload = Payload::Del(DelWorkload { uid: uid.to_owned() });
        self.request("del", Some(uid), payload, None).await
    }

    /// Ends the snapshot: ztunnel drops pods that were neither added nor kept. Once per
    /// connection: Istio's ztunnel treats a second one as a protocol error.
    pub async fn snapshot_sent(&mut self) -> Result<(), ZdsError> {
        self.after_hello()?;
        if self.phase != Phase::Snapshot {
            return Err(ZdsError::out_of_order(
                &self.path,
                "snapshot_sent() was already called; Istio's ztunnel disconnects on a second one",
            ));
        }
        let payload = Payload::SnapshotSent(SnapshotSent {});
        self.phase = Phase::Live;
        self.request("snapshot-sent", None, payload, None).await
    }

    /// Resolves when the connection is no longer usable while idle: [`ZdsError::Closed`] if
    /// ztunnel went away, a [`ProtocolError::Unsolicited`] error if it sent something unasked.
    /// Cancel-safe and consumes nothing, so select on it next to the command channel; once it
    /// resolves, drop the connection. Istio's node agent checks the same with a short read.
    pub async fn closed(&self) -> ZdsError {
        match self.socket.wake().await {
            Ok(Wake::Closed) => ZdsError::Closed {
                path: self.path.clone(),
            },
            Ok(Wake::Packet) => ZdsError::protocol(&self.path, ProtocolError::Unsolicited),
            Err(e) => ZdsError::io(&self.path, "waiting on an idle connection", e),
        }
    }

    fn after_hello(&self) -> Result<(), ZdsError> {
        if self.phase == Phase::Hello {
            return Err(ZdsError::out_of_order(
                &self.path,
                "a request before hello(); read ztunnel's hello first",
            ));
        }
        Ok(())
    }

    async fn request(
        &mut self,
        request: &'static str,
        uid: Option<&str>,
        payload: Payload,
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        if self.awaiting_ack {
            return Err(ZdsError::out_of_order(
                &self.path,
                "an earlier request was abandoned before its ack arrived (timeout or \
                 cancellation), so acks no longer match requests; close this connection",
            ));
        }
        let bytes = encode_request(payload);
        if bytes.len() > MAX_SEND_BYTES {
            return Err(ZdsError::TooLarge {
                path: self.path.clone(),
                what: match uid {
                    Some(uid) => format!("the {request} request for pod {uid}"),
                    None => format!("the {request} request"),
                },
                len: bytes.len(),
                limit: MAX_SEND_BYTES,
            });
        }
        debug!(request, uid, "sending ZDS request");
        self.awaiting_ack = true;
        self.socket
            .send(&bytes, netns)
            .await
            .map_err(|e| ZdsError::io(&self.path, "sending a request", e))?;
        let packet = self.receive("ack").await?;
        self.awaiting_ack = false;
        let error = self
            .decode(&packet, decode_ack)
            .map_err(|problem| ZdsError::protocol(&self.path, problem))?;
        if error.is_empty() {
            return Ok(());
        }
        Err(ZdsError::Refused {
            path: self.path.clone(),
            request,
            uid: uid.map(str::to_owned),
            error,
        })
    }

    /// Receives one packet within the timeout; its descriptors close when it is dropped.
    async fn receive(&mut self, what: &'static str) -> Result<Packet, ZdsError> {
        let received = tokio::time::timeout(self.timeout, self.socket.recv(&mut self.buf))
            .await
            .map_err(|_| ZdsError::Timeout {
                path: self.path.clone(),
                what,
                after: self.timeout,
            })?
            .map_err(|e| ZdsError::io(&self.path, "receiving", e))?;
        match received {
            Received::Packet(packet) => Ok(packet),
            Received::Closed => Err(ZdsError::Closed {
                path: self.path.clone(),
            }),
        }
    }

    fn decode<T>(
        &self,
        packet: &Packet,
        decode: fn(&[u8], usize) -> Result<T, ProtocolError>,
    ) -> Result<T, ProtocolError> {
        packet.intact()?;
        decode(&self.buf[..packet.len], packet.fds.len())
    }
}

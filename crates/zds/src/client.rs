//! ztunnel's side: connect to the node agent, say hello, then take requests and answer each one.
//! What to do with a pod (and whether a keep after snapshot-sent is acceptable) is the caller's.

use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::socket::{Received, SeqPacket};
use crate::wire::{ZdsRequest, decode_request, encode_ack, encode_hello};
use crate::{ProtocolError, RECV_BUFFER_BYTES, ZdsError, netns};

/// ztunnel's connection to the node agent.
///
/// Answer every request from [`next`](Self::next), good or bad, with exactly one
/// [`ack`](Self::ack) or [`nack`](Self::nack) before asking for the next: the agent waits for it.
///
/// Errors from `next`:
/// - [`ZdsError::Protocol`]: the packet was bad (undecodable, truncated, no payload, netns
///   missing, extra or not a netns; any descriptors that came with it are already closed). Packets
///   keep their boundaries, so the connection is still in step: nack with the error's text, then
///   read on, or reconnect for a fresh snapshot as Istio's ztunnel does.
/// - [`ZdsError::Closed`]: the agent went away; reconnect with backoff.
pub struct ZdsClient {
    socket: SeqPacket,
    path: PathBuf,
    buf: Box<[u8]>,
    ack_owed: bool,
}

impl fmt::Debug for ZdsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZdsClient")
            .field("path", &self.path)
            .field("ack_owed", &self.ack_owed)
            .finish_non_exhaustive()
    }
}

impl ZdsClient {
    /// Connects to the agent's socket at `path` and sends the V1 hello.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ZdsError> {
        let path = path.as_ref().to_owned();
        let socket = match SeqPacket::connect(&path) {
            Ok(socket) => socket,
            Err(source) => return Err(ZdsError::Connect { path, source }),
        };
        socket
            .send(&encode_hello(), None)
            .await
            .map_err(|e| ZdsError::io(&path, "sending the hello", e))?;
        Ok(Self {
            socket,
            path,
            buf: vec![0; RECV_BUFFER_BYTES].into_boxed_slice(),
            ack_owed: false,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the agent's next request. Cancel-safe: a packet is taken whole or not at all.
    /// An add's netns has been checked to be a network namespace.
    pub async fn next(&mut self) -> Result<ZdsRequest, ZdsError> {
        if self.ack_owed {
            return Err(ZdsError::out_of_order(
                &self.path,
                "next() before the previous request was answered; call ack() or nack() first",
            ));
        }
        let received = self
            .socket
            .recv(&mut self.buf)
            .await
            .map_err(|e| ZdsError::io(&self.path, "receiving a request", e))?;
        let Received::Packet(mut packet) = received else {
            return Err(ZdsError::Closed {
                path: self.path.clone(),
            });
        };
        self.ack_owed = true;
        let protocol = |problem| ZdsError::protocol(&self.path, problem);
        packet.intact().map_err(protocol)?;
        let request = decode_request(&self.buf[..packet.len], packet.fds.len()).map_err(protocol)?;
        Ok(match request {
            ZdsRequest::Add { uid, info, netns: () } => {
                let Some(netns) = packet.fds.pop() else {
                    return Err(protocol(ProtocolError::MissingNetns { uid }));
                };
                if let Err(reason) = netns::check(netns.as_fd()) {
                    return Err(protocol(ProtocolError::NotNetns { uid, reason }));
                }
                ZdsRequest::Add { uid, info, netns }
            }
            ZdsRequest::Keep { uid } => ZdsRequest::Keep { uid },
            ZdsRequest::Del { uid } => ZdsRequest::Del { uid },
            ZdsRequest::SnapshotSent => ZdsRequest::SnapshotSent,
        })
    }

    /// Answers the last request: done.
    pub async fn ack(&mut self) -> Result<(), ZdsError> {
        self.answer("").await
    }

    /// Answers the last request with an error. An empty `error` is sent as "unspecified error"
    /// (empty means success on the wire); a long one is cut to fit Istio's 1024-byte packets.
    pub async fn nack(&mut self, error: &str) -> Result<(), ZdsError> {
        self.answer(if error.is_empty() { "unspecified error" } else { error })
            .await
    }

    async fn answer(&mut self, error: &str) -> Result<(), ZdsError> {
        if !self.ack_owed {
            return Err(ZdsError::out_of_order(
                &self.path,
                "ack() or nack() with no request to answer",
            ));
        }
        self.socket
            .send(&encode_ack(error), None)
            .await
            .map_err(|e| ZdsError::io(&self.path, "sending an ack", e))?;
        self.ack_owed = false;
        Ok(())
    }
}

//! The `SOCK_SEQPACKET` unix socket under tokio: listen, accept, connect, and one packet per send or
//! receive with its `SCM_RIGHTS` descriptors. Knows nothing of protobuf.

use std::fs::{self, Permissions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::libc;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind,
    connect, listen, recv, recvmsg, sendmsg, socket,
};
use tokio::io::unix::AsyncFd;

use crate::{ProtocolError, RECV_BUFFER_BYTES};

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`, include/net/scm.h). Room
/// for this many means `MSG_CTRUNC` cannot drop descriptors we would then fail to close.
const SCM_MAX_FD: usize = 253;

/// A nonblocking `SOCK_SEQPACKET` unix socket registered with tokio.
#[derive(Debug)]
pub(crate) struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

/// What one receive returned.
pub(crate) enum Received {
    /// One packet: `len` bytes at the start of the buffer and the descriptors that came with it.
    Packet(Packet),
    /// The peer closed the connection.
    Closed,
}

pub(crate) struct Packet {
    pub len: usize,
    /// Owned at once, so every error path closes them.
    pub fds: Vec<OwnedFd>,
    /// `MSG_TRUNC`: the packet was longer than the buffer.
    pub truncated: bool,
    /// `MSG_CTRUNC`: the ancillary data did not fit.
    pub control_truncated: bool,
}

impl Packet {
    /// Ok unless the kernel cut the packet or its descriptors.
    pub(crate) fn intact(&self) -> Result<(), ProtocolError> {
        if self.truncated {
            return Err(ProtocolError::Truncated {
                limit: RECV_BUFFER_BYTES,
            });
        }
        if self.control_truncated {
            return Err(ProtocolError::ControlTruncated);
        }
        Ok(())
    }
}

/// What woke an idle connection.
pub(crate) enum Wake {
    Closed,
    /// A packet is waiting (left in the queue).
    Packet,
}

impl SeqPacket {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open, and its raw value
        // never changes, until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Self { fd })
    }

    /// Binds and listens on `path`, replacing a stale socket file, with mode 0600. On failure,
    /// which step failed and what to check.
    pub(crate) fn listen(path: &Path) -> Result<Self, (&'static str, io::Error)> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                fs::remove_file(path).map_err(|e| ("removing the stale socket file failed", e))?
            }
            Ok(_) => {
                return Err((
                    "the path exists and is not a socket; remove it or choose another path",
                    io::ErrorKind::AlreadyExists.into(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(("cannot inspect the path", e)),
        }
        let socket = new_socket().map_err(|e| ("creating the socket failed", e))?;
        let address =
            UnixAddr::new(path).map_err(|e| ("not a usable unix socket path (at most 107 bytes)", e.into()))?;
        bind(socket.as_raw_fd(), &address)
            .map_err(|e| ("bind failed; check that the directory exists and is writable", e.into()))?;
        fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|e| ("setting mode 0600 failed", e))?;
        listen(&socket, Backlog::MAXCONN).map_err(|e| ("listen failed", e.into()))?;
        Self::new(socket).map_err(|e| ("registering with the tokio reactor failed", e))
    }

    /// Connects to the listener at `path`. Fails at once if its backlog is full (`EAGAIN`).
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        let socket = new_socket()?;
        let address = UnixAddr::new(path)?;
        // A unix connect never goes in progress: it completes or fails at once.
        connect(socket.as_raw_fd(), &address)?;
        Self::new(socket)
    }

    /// Accepts one connection. Cancel-safe.
    pub(crate) async fn accept(&self) -> io::Result<Self> {
        loop {
            let mut guard = self.fd.readable().await?;
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            if let Ok(result) = guard.try_io(|fd| Ok(accept4(fd.as_raw_fd(), flags)?)) {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                return Self::new(unsafe { OwnedFd::from_raw_fd(result?) });
            }
        }
    }

    /// Sends `bytes` as one packet, with `fd` as `SCM_RIGHTS` if given.
    pub(crate) async fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let rights = fd.map(|fd| [fd.as_raw_fd()]);
        let control: Vec<ControlMessage<'_>> = rights.iter().map(|r| ControlMessage::ScmRights(r)).collect();
        let iov = [IoSlice::new(bytes)];
        // MSG_NOSIGNAL: a vanished peer is an EPIPE error, not a process-killing SIGPIPE.
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| Ok(sendmsg::<()>(fd.as_raw_fd(), &iov, &control, flags, None)?));
            if let Ok(sent) = sent {
                // A SEQPACKET send is all or nothing.
                return match sent? {
                    n if n == bytes.len() => Ok(()),
                    _ => Err(io::ErrorKind::WriteZero.into()),
                };
            }
        }
    }

    /// Receives one packet into `buf`. Cancel-safe: the packet is taken in one system call.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            if let Ok(result) = guard.try_io(|fd| recv_now(fd.get_ref().as_fd(), &mut *buf)) {
                return result;
            }
        }
    }

    /// Waits until the peer closes or sends something, leaving any packet queued. Cancel-safe.
    pub(crate) async fn wake(&self) -> io::Result<Wake> {
        loop {
            let mut guard = self.fd.readable().await?;
            let peeked = guard.try_io(|fd| {
                let mut byte = [0u8; 1];
                let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
                Ok(recv(fd.as_raw_fd(), &mut byte, flags)?)
            });
            if let Ok(len) = peeked {
                if len? == 0 && hung_up(self.fd.get_ref().as_fd()) {
                    return Ok(Wake::Closed);
                }
                return Ok(Wake::Packet);
            }
        }
    }
}

fn new_socket() -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    Ok(socket(AddressFamily::Unix, SockType::SeqPacket, flags, None)?)
}

fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let message = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut control), flags)?;
    let mut fds = Vec::new();
    // cmsgs() refuses (ENOBUFS) only on MSG_CTRUNC, which SCM_MAX_FD of room rules out for
    // SCM_RIGHTS; we enable no other ancillary data.
    for cmsg in message.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed these descriptors for us in this call; nothing else
            // owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let (len, flags) = (message.bytes, message.flags);
    // A zero-length packet is legal on SEQPACKET, so 0 bytes means end of file only if the peer
    // has hung up.
    if len == 0 && fds.is_empty() && !flags.contains(MsgFlags::MSG_TRUNC) && hung_up(fd) {
        return Ok(Received::Closed);
    }
    Ok(Received::Packet(Packet {
        len,
        fds,
        truncated: flags.contains(MsgFlags::MSG_TRUNC),
        control_truncated: flags.contains(MsgFlags::MSG_CTRUNC),
    }))
}

/// True if the peer closed or shut down its sending side.
fn hung_up(fd: BorrowedFd<'_>) -> bool {
    // Bare poll(2): nix's `PollFlags` has no POLLRDHUP and drops revents holding unknown bits.
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one initialised pollfd for an open descriptor; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

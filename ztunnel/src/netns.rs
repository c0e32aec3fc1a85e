//! Sockets inside a pod's network namespace. ztunnel itself runs in the node's namespace; for
//! each captured pod it opens listeners and upstream sockets inside the pod's namespace (Istio's
//! "in-pod" mode), so traffic leaves with the pod's own address. A socket keeps the namespace it
//! was created in, so only socket creation needs `setns`.

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Mark carried by ztunnel's own sockets so the in-pod capture rules let them through
/// (0x539 = 1337, the value Istio's in-pod rules exclude).
pub const ZTUNNEL_MARK: u32 = 0x539;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
}

fn home() -> Result<&'static File, NetnsError> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let path = Path::new("/proc/self/ns/net");
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    Ok(HOME.get_or_init(|| file))
}

/// An open handle on a pod's network namespace.
#[derive(Debug)]
pub struct PodNetns {
    file: File,
    path: PathBuf,
}

impl PodNetns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        // Resolve ztunnel's own namespace before ever leaving it.
        home()?;
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.into(),
            source,
        })?;
        Ok(PodNetns {
            file,
            path: path.into(),
        })
    }

    /// A namespace handed over as an open descriptor (ZDS); `label` names it in logs.
    pub fn from_fd(fd: std::os::fd::OwnedFd, label: impl Into<PathBuf>) -> Result<Self, NetnsError> {
        home()?;
        Ok(PodNetns {
            file: File::from(fd),
            path: label.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this thread while it is inside the pod's namespace, then returns home.
    fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R, NetnsError> {
        let home = home()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let result = f();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A worker thread stuck in a pod's namespace would open every later socket there:
            // there is no safe way on, so stop the process (fail closed; the pods' traffic
            // stops until ztunnel is restarted).
            tracing::error!(error = %e, "cannot return to ztunnel's own network namespace; aborting");
            std::process::abort();
        }
        Ok(result)
    }

    /// A listener inside the pod, with SO_REUSEPORT so a new ztunnel can take over.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = self
            .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)))
            .map_err(io::Error::other)??;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    }

    /// Connects from inside the pod, marked so the capture rules do not redirect it again.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self
            .run(|| Socket::new(Domain::for_address(addr), STREAM_NONBLOCKING, Some(Protocol::TCP)))
            .map_err(io::Error::other)??;
        connect_marked(socket, addr).await
    }
}

/// Connects from ztunnel's own namespace (used where no pod namespace is known).
pub async fn connect_host(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), STREAM_NONBLOCKING, Some(Protocol::TCP))?;
    connect_marked(socket, addr).await
}

/// Non-blocking from `socket()` on: saves the two `fcntl`s of `set_nonblocking` per connection.
const STREAM_NONBLOCKING: Type = Type::STREAM.nonblocking();

async fn connect_marked(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    socket.set_mark(ZTUNNEL_MARK)?;
    socket.set_tcp_nodelay(true)?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(addr).await
}

/// The destination a redirected connection was headed for (`SO_ORIGINAL_DST`).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "SO_ORIGINAL_DST returned a non-IP address"))
}

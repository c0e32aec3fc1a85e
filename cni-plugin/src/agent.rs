//! The plugin's side of the [`protocol`](crate::protocol): connect to the node agent's unix
//! socket, send one [`PodRequest`] line, read one [`PodReply`] line, all within one deadline.
//! Behind the [`Agent`] trait so that the command logic is tested without sockets.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::protocol::{PodReply, PodRequest};

/// The longest reply line we read; a real one is well under a kilobyte.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Why the agent gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Nothing listens there (no socket, connection refused, backlog full).
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    /// Connected, but the exchange did not finish in time.
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// The connection failed while sending or receiving.
    #[error("the connection failed")]
    Io(#[source] io::Error),
    /// The agent hung up without a reply line.
    #[error("the agent closed the connection without replying")]
    Closed,
    /// The agent sent more than [`MAX_REPLY_BYTES`] without a newline.
    #[error("the reply is longer than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLong,
    /// The reply line is not a [`PodReply`]: a plugin and agent of different versions?
    #[error("the reply is not a PodReply; check that plugin and agent are the same version")]
    MalformedReply(#[source] serde_json::Error),
}

impl AgentError {
    /// True when the agent is down or stuck, as opposed to answering nonsense.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::TimedOut(_) | Self::Io(_) | Self::Closed)
    }
}

/// Talks to the node agent.
pub trait Agent {
    /// Sends `request` and waits for the reply, giving up after `timeout` in all.
    fn call(&self, socket: &Path, timeout: Duration, request: &PodRequest) -> Result<PodReply, AgentError>;

    /// Checks that the agent accepts connections (STATUS), then hangs up without a request.
    fn probe(&self, socket: &Path, timeout: Duration) -> Result<(), AgentError>;
}

/// The real agent, over its unix stream socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixAgent;

impl Agent for UnixAgent {
    fn call(&self, socket: &Path, timeout: Duration, request: &PodRequest) -> Result<PodReply, AgentError> {
        let deadline = Deadline {
            end: Instant::now() + timeout,
            timeout,
        };
        let mut stream = connect(socket, timeout)?;
        let mut line = serde_json::to_vec(request).map_err(|error| AgentError::Io(error.into()))?;
        line.push(b'\n');
        stream
            .set_write_timeout(Some(deadline.remaining()?))
            .map_err(AgentError::Io)?;
        stream.write_all(&line).map_err(|error| deadline.classify(error))?;
        let reply = read_line(&mut stream, &deadline)?;
        serde_json::from_slice(&reply).map_err(AgentError::MalformedReply)
    }

    fn probe(&self, socket: &Path, timeout: Duration) -> Result<(), AgentError> {
        connect(socket, timeout).map(drop)
    }
}

/// Connects, waiting at most `timeout` (a blocking connect to a unix socket waits while the
/// listener's backlog is full, i.e. while the agent is stuck).
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, AgentError> {
    let address = SockAddr::unix(socket).map_err(AgentError::Connect)?;
    let stream = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(AgentError::Connect)?;
    stream
        .connect_timeout(&address, timeout)
        .map_err(|error| match error.kind() {
            io::ErrorKind::TimedOut => AgentError::TimedOut(timeout),
            _ => AgentError::Connect(error),
        })?;
    Ok(stream.into())
}

struct Deadline {
    end: Instant,
    timeout: Duration,
}

impl Deadline {
    fn remaining(&self) -> Result<Duration, AgentError> {
        let remaining = self.end.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            Err(AgentError::TimedOut(self.timeout))
        } else {
            Ok(remaining)
        }
    }

    /// A socket timeout shows as `WouldBlock` (or `TimedOut`) on Linux.
    fn classify(&self, error: io::Error) -> AgentError {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AgentError::TimedOut(self.timeout),
            _ => AgentError::Io(error),
        }
    }
}

/// Reads up to the first newline (or to EOF), within the deadline.
fn read_line(stream: &mut UnixStream, deadline: &Deadline) -> Result<Vec<u8>, AgentError> {
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(deadline.remaining()?))
            .map_err(AgentError::Io)?;
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(deadline.classify(error)),
        };
        if read == 0 {
            return if reply.iter().all(u8::is_ascii_whitespace) {
                Err(AgentError::Closed)
            } else {
                Ok(reply)
            };
        }
        let chunk = &chunk[..read];
        if let Some(newline) = chunk.iter().position(|byte| *byte == b'\n') {
            reply.extend_from_slice(&chunk[..newline]);
            return Ok(reply);
        }
        reply.extend_from_slice(chunk);
        if reply.len() > MAX_REPLY_BYTES {
            return Err(AgentError::ReplyTooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead, os::unix::net::UnixListener, thread};

    use super::*;
    use crate::protocol::PodCommand;

    fn request() -> PodRequest {
        PodRequest {
            command: PodCommand::Add,
            container_id: "abc".into(),
            netns: Some("/var/run/netns/x".into()),
            interface: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: None,
            ips: vec![],
        }
    }

    /// An agent that reads the request line and then does `answer` with the stream.
    fn agent(answer: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                let mut reader = io::BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    answer(reader.into_inner());
                }
            }
        });
        (dir, path)
    }

    #[test]
    fn round_trip() {
        let (_dir, path) = agent(|mut stream| {
            let _ = stream.write_all(b"{\"ok\":{\"enrolled\":true}}\n");
        });
        let reply = UnixAgent
            .call(&path, Duration::from_secs(5), &request())
            .expect("reply");
        assert_eq!(reply, PodReply::Ok { enrolled: true });
    }

    #[test]
    fn reply_without_newline_before_eof_is_accepted() {
        let (_dir, path) = agent(|mut stream| {
            let _ = stream.write_all(b"{\"ok\":{\"enrolled\":false}}");
        });
        let reply = UnixAgent
            .call(&path, Duration::from_secs(5), &request())
            .expect("reply");
        assert_eq!(reply, PodReply::Ok { enrolled: false });
    }

    #[test]
    fn failures_are_classified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = UnixAgent
            .call(&dir.path().join("none.sock"), Duration::from_secs(1), &request())
            .expect_err("none");
        assert!(
            matches!(error, AgentError::Connect(_)) && error.is_unreachable(),
            "{error:?}"
        );

        let (_dir, path) = agent(drop);
        let error = UnixAgent
            .call(&path, Duration::from_secs(5), &request())
            .expect_err("closed");
        assert!(matches!(error, AgentError::Closed), "{error:?}");

        let (_dir, path) = agent(|stream| {
            thread::sleep(Duration::from_secs(2));
            drop(stream);
        });
        let error = UnixAgent
            .call(&path, Duration::from_millis(200), &request())
            .expect_err("slow");
        assert!(matches!(error, AgentError::TimedOut(_)), "{error:?}");

        let (_dir, path) = agent(|mut stream| {
            let _ = stream.write_all(b"{\"ok\":{}}\n");
        });
        let error = UnixAgent
            .call(&path, Duration::from_secs(5), &request())
            .expect_err("garbled");
        assert!(
            matches!(error, AgentError::MalformedReply(_)) && !error.is_unreachable(),
            "{error:?}"
        );

        let (_dir, path) = agent(|mut stream| {
            let _ = stream.write_all(&vec![b' '; MAX_REPLY_BYTES + 10]);
        });
        let error = UnixAgent
            .call(&path, Duration::from_secs(5), &request())
            .expect_err("long");
        assert!(matches!(error, AgentError::ReplyTooLong), "{error:?}");
    }

    #[test]
    fn probe_connects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        assert!(UnixAgent.probe(&path, Duration::from_secs(1)).is_ok());
        assert!(
            UnixAgent
                .probe(&dir.path().join("none.sock"), Duration::from_secs(1))
                .is_err()
        );
    }
}

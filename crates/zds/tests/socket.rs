//! ZDS over real `SOCK_SEQPACKET` sockets in a temporary directory: our agent against our ztunnel
//! side, and each side against a raw peer that sends what a broken or hostile one would.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_proto::istio::workload::zds::{
    AddWorkload, DelWorkload, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use ambit_zds::{ProtocolError, Version, WorkloadInfo, ZdsClient, ZdsConnection, ZdsError, ZdsListener, ZdsRequest};
use nix::sys::stat::fstat;
use prost::Message;
use tempfile::TempDir;

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    }
}

fn own_netns() -> File {
    File::open("/proc/self/ns/net").expect("open /proc/self/ns/net")
}

/// Device and inode: equal for two descriptors of the same namespace.
fn identity(fd: impl AsFd) -> (u64, u64) {
    let stat = fstat(fd).expect("fstat");
    (stat.st_dev, stat.st_ino)
}

fn socket_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ztunnel.sock");
    (dir, path)
}

/// How many of this process's descriptors refer to `path`. Race-free next to other tests because
/// each test uses its own file.
fn open_count(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

fn request(payload: workload_request::Payload) -> Vec<u8> {
    WorkloadRequest { payload: Some(payload) }.encode_to_vec()
}

fn add_packet(uid: &str) -> Vec<u8> {
    request(workload_request::Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(info("web-0")),
    }))
}

fn ack_packet(error: &str) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(
            ambit_proto::istio::workload::zds::Ack { error: error.into() },
        )),
    }
    .encode_to_vec()
}

fn hello_packet(version: i32) -> Vec<u8> {
    ZdsHello { version }.encode_to_vec()
}

/// A blocking peer made of bare system calls, to send what our own API never would.
mod raw {
    use super::*;
    use nix::sys::socket::{
        AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, accept4,
        bind, connect, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;
    use std::io::{IoSlice, IoSliceMut};

    fn new_socket() -> OwnedFd {
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        // A test that waits for a packet that never comes fails instead of hanging.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(10, 0)).expect("SO_RCVTIMEO");
        fd
    }

    pub fn listen_on(path: &Path) -> OwnedFd {
        let fd = new_socket();
        bind(fd.as_raw_fd(), &UnixAddr::new(path).expect("address")).expect("bind");
        listen(&fd, Backlog::new(8).expect("backlog")).expect("listen");
        fd
    }

    pub struct Peer(pub OwnedFd);

    impl Peer {
        pub fn accept(listener: &OwnedFd) -> Self {
            let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).expect("accept");
            // SAFETY: accept4 just returned this descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(10, 0)).expect("SO_RCVTIMEO");
            Self(fd)
        }

        pub fn connect(path: &Path) -> Self {
            let fd = new_socket();
            connect(fd.as_raw_fd(), &UnixAddr::new(path).expect("address")).expect("connect");
            Self(fd)
        }

        pub fn send(&self, bytes: &[u8], fds: &[RawFd]) {
            let iov = [IoSlice::new(bytes)];
            let rights = [ControlMessage::ScmRights(fds)];
            let control = if fds.is_empty() { &[][..] } else { &rights[..] };
            sendmsg::<()>(self.0.as_raw_fd(), &iov, control, MsgFlags::MSG_NOSIGNAL, None).expect("sendmsg");
        }

        pub fn recv(&self) -> (Vec<u8>, Vec<OwnedFd>) {
            let mut buf = vec![0u8; 4096];
            let mut control = nix::cmsg_space!([RawFd; 8]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let message = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("recvmsg");
            let mut fds = Vec::new();
            for cmsg in message.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel installed these for us.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            let len = message.bytes;
            buf.truncate(len);
            (buf, fds)
        }

        pub fn recv_ack(&self) -> String {
            let (bytes, fds) = self.recv();
            assert!(fds.is_empty());
            match WorkloadResponse::decode(&bytes[..]).expect("ack decodes").payload {
                Some(workload_response::Payload::Ack(ack)) => ack.error,
                None => panic!("response without an ack"),
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Add(String, WorkloadInfo, (u64, u64)),
    Keep(String),
    Del(String),
    SnapshotSent,
}

#[tokio::test]
async fn agent_and_ztunnel_hold_a_conversation() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let ztunnel = tokio::spawn({
        let path = path.clone();
        async move {
            let mut client = ZdsClient::connect(&path).await.expect("connect");
            let mut seen = Vec::new();
            loop {
                let request = match client.next().await {
                    Ok(request) => request,
                    Err(error) if error.is_closed() => return seen,
                    Err(error) => panic!("unexpected error: {error}"),
                };
                let refuse = request.uid() == Some("u-unknown");
                seen.push(match request {
                    ZdsRequest::Add { uid, info, netns } => Seen::Add(uid, info, identity(netns)),
                    ZdsRequest::Keep { uid } => Seen::Keep(uid),
                    ZdsRequest::Del { uid } => Seen::Del(uid),
                    ZdsRequest::SnapshotSent => Seen::SnapshotSent,
                    other => panic!("unexpected request {other:?}"),
                });
                if refuse {
                    client.nack("no pod u-unknown here").await.expect("nack");
                } else {
                    client.ack().await.expect("ack");
                }
            }
        }
    });

    let mut conn = listener.accept().await.expect("accept");
    assert_eq!(conn.hello().await.expect("hello"), Version::V1);
    let netns = own_netns();
    conn.add("u1", info("web-0"), netns.as_fd()).await.expect("add u1");
    conn.add("u2", info("web-1"), netns.as_fd()).await.expect("add u2");
    conn.keep("u3").await.expect("keep u3");
    conn.snapshot_sent().await.expect("snapshot sent");
    conn.del("u1").await.expect("del u1");
    let refused = conn.del("u-unknown").await.expect_err("refused");
    assert_eq!(refused.refusal(), Some("no pod u-unknown here"));
    let text = refused.to_string();
    assert!(
        text.contains("refused del for pod u-unknown: no pod u-unknown here"),
        "{text}"
    );
    // A refusal leaves the connection usable.
    conn.del("u2").await.expect("del u2");
    drop(conn);

    let ns = identity(&netns);
    assert_eq!(
        ztunnel.await.expect("ztunnel task"),
        vec![
            Seen::Add("u1".into(), info("web-0"), ns),
            Seen::Add("u2".into(), info("web-1"), ns),
            Seen::Keep("u3".into()),
            Seen::SnapshotSent,
            Seen::Del("u1".into()),
            Seen::Del("u-unknown".into()),
            Seen::Del("u2".into()),
        ]
    );
}

/// The shape the node agent uses: one task per connection, commands from a channel, and
/// `closed()` to notice a ztunnel that went away while idle.
#[tokio::test]
async fn a_connection_task_notices_ztunnel_leaving_while_idle() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let mut client = ZdsClient::connect(&path).await.expect("connect");
    let mut conn = listener.accept().await.expect("accept");
    conn.hello().await.expect("hello");
    let (commands, mut rx) = tokio::sync::mpsc::channel::<String>(8);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(uid) => conn.del(&uid).await.expect("del"),
                    None => return None,
                },
                error = conn.closed() => return Some(error),
            }
        }
    });
    commands.send("u1".into()).await.expect("command");
    let request = client.next().await.expect("request");
    assert!(
        matches!(&request, ZdsRequest::Del { uid } if uid == "u1"),
        "{request:?}"
    );
    client.ack().await.expect("ack");
    // Idle and alive: `closed()` stays pending.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished());
    drop(client);
    let error = task.await.expect("task").expect("closed() resolved");
    assert!(error.is_closed(), "{error}");
    assert!(error.to_string().contains(&*path.to_string_lossy()));
}

#[tokio::test]
async fn closed_reports_an_unsolicited_packet() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(1), &[]);
    let mut conn = listener.accept().await.expect("accept");
    conn.hello().await.expect("hello");
    peer.send(&ack_packet(""), &[]);
    let error = conn.closed().await;
    assert_eq!(error.protocol_error(), Some(&ProtocolError::Unsolicited));
}

#[tokio::test]
async fn the_agent_rejects_bad_hellos() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let hello_error = |conn: ZdsConnection| async move {
        let mut conn = conn;
        conn.hello().await.expect_err("bad hello")
    };

    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(2), &[]);
    let error = hello_error(listener.accept().await.expect("accept")).await;
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::UnsupportedVersion { version: 2 })
    );
    assert!(error.to_string().contains("version 2"), "{error}");

    // Version 0 encodes as an empty packet, which must not be mistaken for end of file.
    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(0), &[]);
    let error = hello_error(listener.accept().await.expect("accept")).await;
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::UnsupportedVersion { version: 0 })
    );

    let peer = raw::Peer::connect(&path);
    peer.send(b"\x0a\xff\xff\xff", &[]);
    let error = hello_error(listener.accept().await.expect("accept")).await;
    assert!(
        matches!(
            error.protocol_error(),
            Some(ProtocolError::Undecodable {
                message: "ZdsHello",
                ..
            })
        ),
        "{error}"
    );

    // A hello carrying a descriptor: refused, and the descriptor closed on our side.
    let (_file_dir, file_path) = socket_path();
    let file = File::create(&file_path).expect("file");
    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(1), &[file.as_raw_fd()]);
    let error = hello_error(listener.accept().await.expect("accept")).await;
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::UnexpectedFds {
            message: "ZdsHello",
            count: 1
        })
    );
    assert_eq!(open_count(&file_path), 1, "only our own copy stays open");

    let peer = raw::Peer::connect(&path);
    peer.send(&vec![0u8; ambit_zds::RECV_BUFFER_BYTES + 1], &[]);
    let error = hello_error(listener.accept().await.expect("accept")).await;
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::Truncated {
            limit: ambit_zds::RECV_BUFFER_BYTES
        })
    );

    let _silent = raw::Peer::connect(&path);
    let mut conn = listener.accept().await.expect("accept");
    conn.set_timeout(Duration::from_millis(50));
    let error = conn.hello().await.expect_err("no hello");
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn the_agent_rejects_bad_acks_and_keeps_acks_in_step() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(1), &[]);
    let netns = own_netns();
    let answers = std::thread::spawn(move || {
        let mut requests = Vec::new();
        let (request, fds) = peer.recv();
        requests.push((request, fds.len()));
        peer.send(b"\xff\xff", &[]);
        let (request, fds) = peer.recv();
        requests.push((request, fds.len()));
        peer.send(&ack_packet(""), &[own_netns().as_raw_fd()]);
        let (request, fds) = peer.recv();
        requests.push((request, fds.len()));
        peer.send(&WorkloadResponse { payload: None }.encode_to_vec(), &[]);
        let (request, fds) = peer.recv();
        requests.push((request, fds.len()));
        peer.send(&ack_packet(""), &[]);
        // Answer nothing more: the next request times out.
        let _ = peer.recv();
        (peer, requests)
    });

    let mut conn = listener.accept().await.expect("accept");
    conn.hello().await.expect("hello");
    let error = conn
        .add("u1", info("web-0"), netns.as_fd())
        .await
        .expect_err("garbage ack");
    assert!(matches!(
        error.protocol_error(),
        Some(ProtocolError::Undecodable {
            message: "WorkloadResponse",
            ..
        })
    ));
    let error = conn.del("u1").await.expect_err("ack with a descriptor");
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::UnexpectedFds {
            message: "WorkloadResponse",
            count: 1
        })
    );
    let error = conn.snapshot_sent().await.expect_err("empty response");
    assert_eq!(
        error.protocol_error(),
        Some(&ProtocolError::EmptyPayload {
            message: "WorkloadResponse"
        })
    );
    // Each bad answer still answered its own request, so the next one pairs up.
    conn.del("u2").await.expect("del u2");

    conn.set_timeout(Duration::from_millis(100));
    let error = conn.del("u3").await.expect_err("no answer");
    assert!(error.is_timeout(), "{error}");
    let error = conn.del("u4").await.expect_err("acks out of step");
    assert!(matches!(error, ZdsError::OutOfOrder { .. }), "{error}");

    let (_peer, requests) = answers.join().expect("peer thread");
    let uids: Vec<_> = requests
        .iter()
        .map(|(bytes, fds)| {
            let request = WorkloadRequest::decode(&bytes[..]).expect("request decodes");
            (request.payload.expect("payload"), *fds)
        })
        .collect();
    assert!(matches!(&uids[0], (workload_request::Payload::Add(a), 1) if a.uid == "u1"));
    assert!(matches!(&uids[1], (workload_request::Payload::Del(d), 0) if d.uid == "u1"));
    assert!(matches!(&uids[2], (workload_request::Payload::SnapshotSent(_), 0)));
    assert!(matches!(&uids[3], (workload_request::Payload::Del(d), 0) if d.uid == "u2"));
}

#[tokio::test]
async fn ztunnel_rejects_bad_requests_closes_their_fds_and_stays_in_step() {
    let (_dir, path) = socket_path();
    let listener = raw::listen_on(&path);
    let mut client = ZdsClient::connect(&path).await.expect("connect");
    let agent = raw::Peer::accept(&listener);
    let (hello, fds) = agent.recv();
    assert_eq!(
        (ZdsHello::decode(&hello[..]).expect("hello").version, fds.len()),
        (1, 0)
    );

    let (_file_dir, file_path) = socket_path();
    let file = File::create(&file_path).expect("file");
    let netns = own_netns();
    let del = request(workload_request::Payload::Del(DelWorkload { uid: "u1".into() }));
    let cases: Vec<(Vec<u8>, Vec<RawFd>, ProtocolError)> = vec![
        (
            add_packet("u1"),
            vec![],
            ProtocolError::MissingNetns { uid: "u1".into() },
        ),
        (
            add_packet("u1"),
            vec![file.as_raw_fd(), netns.as_raw_fd()],
            ProtocolError::TooManyFds {
                uid: "u1".into(),
                count: 2,
            },
        ),
        (
            del,
            vec![file.as_raw_fd()],
            ProtocolError::UnexpectedFds {
                message: "DelWorkload",
                count: 1,
            },
        ),
        (
            vec![],
            vec![],
            ProtocolError::EmptyPayload {
                message: "WorkloadRequest",
            },
        ),
        (
            vec![0u8; ambit_zds::RECV_BUFFER_BYTES + 1],
            vec![file.as_raw_fd()],
            ProtocolError::Truncated {
                limit: ambit_zds::RECV_BUFFER_BYTES,
            },
        ),
    ];
    for (packet, fds, expected) in cases {
        agent.send(&packet, &fds);
        let error = client.next().await.expect_err("bad request");
        assert_eq!(error.protocol_error(), Some(&expected), "{error}");
        assert_eq!(open_count(&file_path), 1, "{expected}: descriptor leaked");
        client.nack(&expected.to_string()).await.expect("nack");
        assert_eq!(agent.recv_ack(), expected.to_string());
    }

    agent.send(b"\xff\xff\xff garbage", &[]);
    let error = client.next().await.expect_err("garbage");
    assert!(matches!(
        error.protocol_error(),
        Some(ProtocolError::Undecodable { .. })
    ));
    client.nack("").await.expect("nack");
    assert_eq!(agent.recv_ack(), "unspecified error");

    // A regular file where a netns belongs.
    agent.send(&add_packet("u2"), &[file.as_raw_fd()]);
    let error = client.next().await.expect_err("not a netns");
    match error.protocol_error() {
        Some(ProtocolError::NotNetns { uid, reason }) => {
            assert_eq!(uid, "u2");
            assert!(reason.contains("not nsfs"), "{reason}");
        }
        other => panic!("expected NotNetns, got {other:?}"),
    }
    assert_eq!(open_count(&file_path), 1, "the regular file was not closed");
    client.nack(&error.to_string()).await.expect("nack");
    assert!(agent.recv_ack().contains("not a network namespace"));

    // Still in step: a good add goes through.
    agent.send(&add_packet("u3"), &[netns.as_raw_fd()]);
    match client.next().await.expect("good add") {
        ZdsRequest::Add {
            uid, netns: received, ..
        } => {
            assert_eq!(uid, "u3");
            assert_eq!(identity(&received), identity(&netns));
        }
        other => panic!("expected an add, got {other:?}"),
    }
    let error = client.next().await.expect_err("must answer first");
    assert!(matches!(error, ZdsError::OutOfOrder { .. }), "{error}");
    client.ack().await.expect("ack");
    assert_eq!(agent.recv_ack(), "");
    let error = client.ack().await.expect_err("nothing to answer");
    assert!(matches!(error, ZdsError::OutOfOrder { .. }), "{error}");

    drop(agent);
    let error = client.next().await.expect_err("agent gone");
    assert!(error.is_closed(), "{error}");
}

#[tokio::test]
async fn a_peer_closing_mid_request_is_reported_as_closed() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");

    // ztunnel says hello and leaves before the first ack.
    let peer = raw::Peer::connect(&path);
    peer.send(&hello_packet(1), &[]);
    let mut conn = listener.accept().await.expect("accept");
    conn.hello().await.expect("hello");
    drop(peer);
    let error = conn.del("u1").await.expect_err("peer gone");
    assert!(error.is_closed(), "{error}");

    // The agent sends a request and leaves before ztunnel answers.
    let mut client = ZdsClient::connect(&path).await.expect("connect");
    let mut conn = listener.accept().await.expect("accept");
    conn.hello().await.expect("hello");
    let pending = tokio::spawn(async move { conn.del("u1").await });
    let request = client.next().await.expect("request");
    assert!(
        matches!(&request, ZdsRequest::Del { uid } if uid == "u1"),
        "{request:?}"
    );
    pending.abort();
    assert!(pending.await.is_err_and(|e| e.is_cancelled()));
    let error = client.ack().await.expect_err("agent gone");
    assert!(error.is_closed(), "{error}");
}

#[tokio::test]
async fn requests_out_of_protocol_order_are_refused_locally() {
    let (_dir, path) = socket_path();
    let listener = ZdsListener::bind(&path).expect("bind");
    let mut client = ZdsClient::connect(&path).await.expect("connect");
    let mut conn = listener.accept().await.expect("accept");
    let error = conn.del("u1").await.expect_err("before hello");
    assert!(matches!(error, ZdsError::OutOfOrder { .. }), "{error}");
    conn.hello().await.expect("hello");
    let ztunnel = tokio::spawn(async move {
        client.next().await.expect("snapshot sent");
        client.ack().await.expect("ack");
        client
    });
    conn.snapshot_sent().await.expect("snapshot sent");
    let _client = ztunnel.await.expect("ztunnel");
    for error in [
        conn.keep("u1").await.expect_err("keep after snapshot"),
        conn.snapshot_sent().await.expect_err("second snapshot"),
        conn.hello().await.expect_err("second hello"),
    ] {
        assert!(matches!(error, ZdsError::OutOfOrder { .. }), "{error}");
    }

    let long = "x".repeat(2000);
    let error = conn.del(&long).await.expect_err("too large");
    assert!(matches!(error, ZdsError::TooLarge { limit: 1024, .. }), "{error}");
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_and_names_the_path_on_failure() {
    let (_dir, path) = socket_path();
    let stale = ZdsListener::bind(&path).expect("first bind");
    let listener = ZdsListener::bind(&path).expect("bind over a stale socket");
    drop(stale);
    let mode = std::fs::metadata(listener.path()).expect("stat").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    let _client = ZdsClient::connect(&path).await.expect("connect");
    listener.accept().await.expect("accept");

    let missing = path.with_file_name("missing").join("ztunnel.sock");
    let error = ZdsListener::bind(&missing).expect_err("no directory");
    let text = error.to_string();
    assert!(text.contains(&*missing.to_string_lossy()), "{text}");
    assert!(text.contains("directory exists"), "{text}");

    let file = path.with_file_name("plain-file");
    File::create(&file).expect("file");
    let error = ZdsListener::bind(&file).expect_err("not a socket");
    assert!(error.to_string().contains("not a socket"), "{error}");
    assert!(file.exists(), "a non-socket file must not be removed");

    let error = ZdsClient::connect(&missing).await.expect_err("no listener");
    assert!(matches!(error, ZdsError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&*missing.to_string_lossy()));
}

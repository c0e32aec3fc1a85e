//! The ztunnels connected over ZDS. Each connection gets the snapshot of every enrolled pod when
//! it says hello, then every later add and delete. A pod counts as handed over only when every
//! connected ztunnel acknowledged it (during a hand-over two are connected and both open
//! listeners, SO_REUSEPORT); with none connected, an add fails — the pod must not start
//! unmeshed.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ambit_proto::istio::workload::zds::WorkloadInfo;
use ambit_zds::{ZdsConnection, ZdsListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A pod as ztunnel receives it.
#[derive(Debug, Clone)]
pub struct HandedPod {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns: Arc<File>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HandOverError {
    #[error("no ztunnel is connected to {socket}; is ztunnel running on this node?")]
    NotConnected { socket: PathBuf },
    #[error("ztunnel #{connection} refused pod {uid}: {reason}")]
    Refused {
        connection: u64,
        uid: String,
        reason: String,
    },
    #[error("ztunnel #{connection} did not acknowledge pod {uid} within {timeout:?}")]
    Timeout {
        connection: u64,
        uid: String,
        timeout: Duration,
    },
    #[error("ztunnel #{connection} went away while handling pod {uid}")]
    Gone { connection: u64, uid: String },
}

enum Command {
    Add(HandedPod, oneshot::Sender<Result<(), String>>),
    Del(String, oneshot::Sender<Result<(), String>>),
}

struct Handle {
    id: u64,
    tx: mpsc::Sender<Command>,
}

/// What a new connection's snapshot holds: every pod enrolled at that moment.
pub type Snapshot = Arc<dyn Fn() -> Vec<HandedPod> + Send + Sync>;

pub struct Ztunnels {
    socket: PathBuf,
    connections: Mutex<Vec<Handle>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl Ztunnels {
    pub fn new(socket: PathBuf, timeout: Duration) -> Arc<Ztunnels> {
        Arc::new(Ztunnels {
            socket,
            connections: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            timeout,
        })
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Handle>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts ztunnels until `stop`.
    pub async fn serve(self: Arc<Self>, listener: ZdsListener, snapshot: Snapshot, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok(connection) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(self.clone().run(id, connection, snapshot.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ZDS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn run(self: Arc<Self>, id: u64, mut connection: ZdsConnection, snapshot: Snapshot, stop: CancellationToken) {
        connection.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, connection.hello()).await {
            Ok(Ok(version)) => tracing::info!(connection = id, ?version, "ztunnel connected"),
            Ok(Err(e)) => return tracing::warn!(connection = id, error = %e, "ztunnel hello failed"),
            Err(_) => return tracing::warn!(connection = id, "no hello from ztunnel; closing"),
        }
        // Registered before the snapshot is taken, so a pod enrolled meanwhile is queued for this
        // connection rather than missed; a pod in both is added twice, which ztunnel accepts.
        let (tx, mut rx) = mpsc::channel(64);
        self.lock().push(Handle { id, tx });
        let result = async {
            for pod in snapshot() {
                self.send(&mut connection, id, Command::Add(pod, oneshot::channel().0))
                    .await?;
            }
            connection.snapshot_sent().await.map_err(|e| e.to_string())?;
            tracing::info!(connection = id, "snapshot sent");
            loop {
                let command = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    closed = connection.closed() => return Err(closed.to_string()),
                    command = rx.recv() => match command {
                        Some(c) => c,
                        None => return Ok(()),
                    },
                };
                self.send(&mut connection, id, command).await?;
            }
        }
        .await;
        self.lock().retain(|h| h.id != id);
        match result {
            Ok(()) => tracing::info!(connection = id, "ZDS connection closed"),
            Err(reason) => tracing::warn!(connection = id, %reason, "ztunnel disconnected"),
        }
    }

    /// Sends one command; a refusal goes back to the caller, a broken connection ends it.
    async fn send(&self, connection: &mut ZdsConnection, id: u64, command: Command) -> Result<(), String> {
        let (uid, result, reply) = match command {
            Command::Add(pod, reply) => {
                let result = connection.add(&pod.uid, pod.info.clone(), pod.netns.as_fd()).await;
                (pod.uid, result, reply)
            }
            Command::Del(uid, reply) => {
                let result = connection.del(&uid).await;
                (uid, result, reply)
            }
        };
        match result {
            Ok(()) => {
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Err(e) => match e.refusal() {
                Some(reason) => {
                    tracing::warn!(connection = id, %uid, %reason, "ztunnel refused the pod");
                    let _ = reply.send(Err(reason.to_owned()));
                    Ok(())
                }
                None => Err(e.to_string()),
            },
        }
    }

    /// Hands `pod` to every connected ztunnel and waits for all acknowledgements.
    pub async fn add(&self, pod: HandedPod) -> Result<(), HandOverError> {
        let uid = pod.uid.clone();
        self.broadcast(&uid, true, |reply| Command::Add(pod.clone(), reply))
            .await
    }

    /// Tells every connected ztunnel that `uid` is gone; with none connected there is nothing to
    /// tell (a ztunnel that connects later gets a snapshot without the pod).
    pub async fn delete(&self, uid: &str) -> Result<(), HandOverError> {
        self.broadcast(uid, false, |reply| Command::Del(uid.to_owned(), reply))
            .await
    }

    async fn broadcast(
        &self,
        uid: &str,
        require_one: bool,
        command: impl Fn(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), HandOverError> {
        let targets: Vec<(u64, mpsc::Sender<Command>)> = self.lock().iter().map(|h| (h.id, h.tx.clone())).collect();
        if targets.is_empty() && require_one {
            return Err(HandOverError::NotConnected {
                socket: self.socket.clone(),
            });
        }
        let mut waits = Vec::new();
        for (connection, tx) in targets {
            let (reply_tx, reply_rx) = oneshot::channel();
            let gone = HandOverError::Gone {
                connection,
                uid: uid.to_owned(),
            };
            if tx.send(command(reply_tx)).await.is_err() {
                return Err(gone);
            }
            waits.push((connection, reply_rx, gone));
        }
        for (connection, reply, gone) in waits {
            match tokio::time::timeout(self.timeout, reply).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(reason))) => {
                    return Err(HandOverError::Refused {
                        connection,
                        uid: uid.to_owned(),
                        reason,
                    });
                }
                Ok(Err(_)) => return Err(gone),
                Err(_) => {
                    return Err(HandOverError::Timeout {
                        connection,
                        uid: uid.to_owned(),
                        timeout: self.timeout,
                    });
                }
            }
        }
        Ok(())
    }
}

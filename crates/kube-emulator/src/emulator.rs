//! The running emulator: binds the listener, runs the server on its own thread and runtime (so
//! it serves while the caller blocks, e.g. on a `kubectl` subprocess, and works from sync and
//! async tests alike), and stops everything when the handle is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::EmulatorError;
use crate::server::{self, Shared};

/// How to run an emulator. `EmulatorConfig::default()` listens on `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many changes are kept for watches to resume from; older resourceVersions get 410.
    pub event_history: usize,
    /// How often watches that allow bookmarks receive one.
    pub bookmark_interval: Duration,
    /// The API server's audiences: tokens requested without audiences get these, and
    /// TokenReviews without audiences check against them.
    pub api_audiences: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            event_history: 1000,
            bookmark_interval: Duration::from_secs(1),
            api_audiences: vec!["https://kubernetes.default.svc.cluster.local".to_owned()],
        }
    }
}

/// A running emulator. Dropping it stops the server and ends all connections.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds `config.listen` and starts serving on a background thread.
    pub fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let listener = TcpListener::bind(config.listen).map_err(|source| EmulatorError::Bind {
            addr: config.listen,
            source,
        })?;
        let address = listener.local_addr().map_err(|source| EmulatorError::Bind {
            addr: config.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| EmulatorError::Bind { addr: address, source })?;
        let shared = Arc::new(Shared::new(
            address,
            config.event_history,
            config.api_audiences,
            config.bookmark_interval,
        ));
        crate::seed::default_namespaces(&shared);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EmulatorError::Runtime)?;
        let (shutdown, stopped) = oneshot::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kube-emulator-{}", address.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, server_shared, stopped).await,
                        Err(error) => tracing::error!(%error, "cannot register the emulator listener"),
                    }
                });
            })
            .map_err(EmulatorError::Runtime)?;
        tracing::info!(%address, "kube emulator listening");
        Ok(Emulator {
            shared,
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The URL as an `http::Uri`, e.g. for `kube::Config::new(emulator.uri())`.
    pub fn uri(&self) -> http::Uri {
        // An IP and port always make a valid authority.
        http::Uri::builder()
            .scheme("http")
            .authority(self.address.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default()
    }

    /// A kubeconfig (context `emulator`, namespace `default`, no credentials) for this emulator.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\nusers:\n- name: emulator\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`Emulator::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), EmulatorError> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig()).map_err(|source| EmulatorError::Kubeconfig {
            path: path.to_owned(),
            source,
        })
    }

    /// Moves the emulator's clock forward (token expiry, timestamps) without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Simulates a compaction: forgets the change history and ends every open watch, so watches
    /// resuming from any resourceVersion issued so far get `410 Gone` and their clients relist.
    pub fn expire_watch_history(&self) {
        self.shared.state().compact_all();
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().current_rv()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The server may already have stopped; nothing to tell then.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(address = %self.address, "kube emulator thread panicked");
        }
    }
}

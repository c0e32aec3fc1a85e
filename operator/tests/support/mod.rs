//! What the operator's integration tests (`local.rs`, `kubernetes.rs`) share: the operator
//! configuration both start from, ztunnel's xDS and CA clients pointed at an operator, waiting
//! on the xDS state with a deadline, and plain HTTP GETs of the monitoring endpoints.
//!
//! A module of each test crate (`mod support;`), not a test target of its own.

#![allow(dead_code)] // Each test crate uses its own part.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_model::State;
use ambit_operator::app::Operator;
use ambit_operator::config::{Config, Source};
use ambit_xds::client::{ClientConfig, ClientStatus, TokenSource, XdsClient};
use ambit_ztunnel::certs::{CaClient, CaClientConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig};

/// The name clients verify on the operator's serving certificate.
pub const SERVER_NAME: &str = "ambit-operator.ambit-system.svc";

/// A temp dir for one test's files.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// An operator configuration on ephemeral loopback ports with the defaults both test files use;
/// the caller sets what its source needs (tokens, lease and debounce timings) on top.
pub fn config(source: Source, state_dir: PathBuf, pod_name: &str) -> Config {
    Config {
        source,
        state_dir,
        supplied_ca: None,
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        monitoring_addr: "127.0.0.1:0".parse().expect("addr"),
        server_names: vec![SERVER_NAME.to_owned()],
        trust_domain: "cluster.local".to_owned(),
        domain_suffix: "cluster.local".to_owned(),
        cluster_id: "Kubernetes".to_owned(),
        cert_ttl: Duration::from_secs(3600),
        max_cert_ttl: Duration::from_secs(24 * 3600),
        ztunnel_service_account: ("ambit-system".to_owned(), "ztunnel".to_owned()),
        namespace: "ambit-system".to_owned(),
        pod_name: pod_name.to_owned(),
        lease_duration: Duration::from_secs(15),
        lease_retry: Duration::from_secs(2),
        debounce: Duration::from_millis(10),
        max_debounce: Duration::from_millis(100),
        worker_threads: 0,
    }
}

/// ztunnel's xDS client configuration for the operator at `grpc_addr`: TLS to [`SERVER_NAME`]
/// under `root_pem`, `token`, node `node-a`, reconnecting after 50 ms at first.
pub fn xds_config(grpc_addr: SocketAddr, node_id: &str, root_pem: &str, token: TokenSource) -> ClientConfig {
    let mut config = ClientConfig::new(format!("https://{grpc_addr}"), node_id);
    config.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem))
            .domain_name(SERVER_NAME),
    );
    config.token = token;
    config.node_metadata.insert("NODE_NAME".to_owned(), "node-a".to_owned());
    config.backoff_initial = Duration::from_millis(50);
    config
}

/// A running xDS client publishing what it receives; waits give up after `deadline`.
pub struct Xds {
    pub state: watch::Receiver<Arc<State>>,
    pub status: watch::Receiver<ClientStatus>,
    deadline: Duration,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Xds {
    pub fn spawn(config: ClientConfig, deadline: Duration) -> Xds {
        let (state_tx, state) = watch::channel(Arc::new(State::default()));
        let client = XdsClient::new(config, state_tx);
        let status = client.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(client.run(stop.clone()));
        Xds {
            state,
            status,
            deadline,
            stop,
            task,
        }
    }

    /// Waits until the published state satisfies `condition`; fails with the last state seen.
    pub async fn wait_for(&mut self, what: &str, condition: impl Fn(&State) -> bool) -> Arc<State> {
        let deadline = self.deadline;
        let waited = tokio::time::timeout(deadline, self.state.wait_for(|s| condition(s)))
            .await
            .map(|found| found.map(|state| state.clone()));
        match waited {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => panic!("xDS client stopped while waiting for {what}"),
            Err(_) => panic!(
                "no xDS state with {what} within {deadline:?}; client status {:?}; last state:\n{}",
                *self.status.borrow(),
                dump(&self.state.borrow())
            ),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("xDS client task");
    }
}

pub fn dump(state: &State) -> String {
    serde_json::to_string_pretty(state).unwrap_or_else(|e| format!("<unserializable state: {e}>"))
}

/// ztunnel's CA client for `operator`, presenting the token in `token_path`, asking for `ttl`.
pub fn ca_client(operator: &Operator, token_path: PathBuf, ttl: Duration) -> CaClient {
    CaClient::new(CaClientConfig {
        address: format!("https://{}", operator.grpc_addr()),
        root_pem: Some(operator.root_pem().to_owned()),
        server_name: Some(SERVER_NAME.to_owned()),
        token_path,
        ttl,
    })
    .expect("CA client")
}

/// GET over plain HTTP/1.1 on the monitoring port: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to monitoring");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}{path}: {response:?}"));
    (code, body.to_owned())
}

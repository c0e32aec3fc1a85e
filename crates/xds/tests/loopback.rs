//! Server and client together over loopback TCP, in one process: the protocol end to end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_model::State;
use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambit_proto::istio::workload as wl;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ambit_xds::client::{ClientConfig, ClientStatus, TokenSource, XdsClient};
use ambit_xds::convert::{ConvertOptions, address_any, to_resources};
use ambit_xds::server::{
    AllowAll, Authenticator, ClientIdentity, ResourceStore, ServerConfig, ServerMetrics, XdsServer, bearer_token,
};
use anyhow::Context;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

/// Upper bound for anything to happen; tests wait on conditions, this only stops a hang.
const LIMIT: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    server: XdsServer,
    metrics: Arc<ServerMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(store: Arc<ResourceStore>, auth: Arc<dyn Authenticator>, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(store, auth, addr, ServerConfig::default()).await
    }

    async fn start_with(
        store: Arc<ResourceStore>,
        auth: Arc<dyn Authenticator>,
        addr: SocketAddr,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(ServerMetrics::default());
        let server = XdsServer::new(store, auth, Arc::clone(&metrics), config);
        let (stop, stopped) = oneshot::channel::<()>();
        let service = server.clone().into_service();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, TcpListenerStream::new(listener), async {
                    stopped.await.ok();
                })
                .await;
            if let Err(error) = result {
                panic!("test server failed: {error}");
            }
        });
        Ok(Self {
            addr,
            server,
            metrics,
            stop: Some(stop),
            task,
        })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.server.shutdown();
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        tokio::time::timeout(LIMIT, self.task).await??;
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

struct TestClient {
    state: watch::Receiver<Arc<State>>,
    status: watch::Receiver<ClientStatus>,
    stop: CancellationToken,
}

impl TestClient {
    fn start(config: ClientConfig) -> Self {
        let (tx, state) = watch::channel(Arc::new(State::default()));
        let client = XdsClient::new(config, tx);
        let status = client.status();
        let stop = CancellationToken::new();
        tokio::spawn(client.run(stop.clone()));
        Self { state, status, stop }
    }

    async fn state_where(&mut self, what: &str, check: impl Fn(&State) -> bool) -> anyhow::Result<Arc<State>> {
        let state = tokio::time::timeout(LIMIT, self.state.wait_for(|s| check(s)))
            .await
            .with_context(|| format!("waiting for {what}"))??;
        Ok(Arc::clone(&state))
    }

    async fn status_where(
        &mut self,
        what: &str,
        check: impl Fn(&ClientStatus) -> bool,
    ) -> anyhow::Result<ClientStatus> {
        let status = tokio::time::timeout(LIMIT, self.status.wait_for(|s| check(s)))
            .await
            .with_context(|| format!("waiting for {what}"))??;
        Ok(*status)
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config(server: &TestServer) -> ClientConfig {
    let mut config = ClientConfig::new(
        server.endpoint(),
        "ztunnel~10.0.0.1~ztunnel-x.ambit-system~ambit-system.svc.cluster.local",
    );
    config.backoff_initial = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    config
}

fn mesh(workloads: &[(&str, &str)]) -> anyhow::Result<State> {
    let mut yaml = String::from("workloads:\n");
    for (name, ip) in workloads {
        yaml.push_str(&format!(
            "  - {{ name: {name}, namespace: default, node: n1, addresses: [{ip}] }}\n"
        ));
    }
    yaml.push_str("authorizationPolicies:\n  - { name: deny-all, namespace: default, action: DENY, rules: [ {} ] }\n");
    Ok(State::from_config(ambit_model::config::parse(&yaml)?))
}

fn publish(store: &ResourceStore, state: &State) {
    let resources = to_resources(state, &ConvertOptions::default());
    store.replace_all(ADDRESS_TYPE_URL, resources.addresses);
    store.replace_all(AUTHORIZATION_TYPE_URL, resources.authorizations);
}

fn names(state: &State) -> Vec<String> {
    state.workloads().map(|w| w.name.clone()).collect()
}

fn any_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn client_follows_add_change_and_delete() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    publish(&store, &mesh(&[("a", "10.0.0.1")])?);
    let server = TestServer::start(Arc::clone(&store), Arc::new(AllowAll), any_addr()).await?;
    let mut client = TestClient::start(config(&server));

    client.status_where("synced", |s| s.synced).await?;
    let state = client.state_where("a", |s| names(s) == ["a"]).await?;
    assert_eq!(state.policies().count(), 1);

    publish(&store, &mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")])?);
    client.state_where("a and b", |s| names(s) == ["a", "b"]).await?;

    publish(&store, &mesh(&[("a", "10.0.0.9"), ("b", "10.0.0.2")])?);
    let state = client
        .state_where("a moved", |s| {
            s.workload_by_ip("10.0.0.9".parse().expect("ip")).is_some()
        })
        .await?;
    assert!(state.workload_by_ip("10.0.0.1".parse()?).is_none());

    publish(&store, &mesh(&[("b", "10.0.0.2")])?);
    client.state_where("a deleted", |s| names(s) == ["b"]).await?;
    assert_eq!(server.metrics.connected_clients(), 1);
    assert_eq!(server.metrics.nacks(ADDRESS_TYPE_URL), 0);
    server.stop().await
}

/// A raw stream, for what the ztunnel client never does (explicit names, unsubscribe).
struct RawStream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl RawStream {
    async fn open(server: &TestServer, token: Option<&str>) -> Result<Self, Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(server.endpoint())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (requests, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let responses = client.delta_aggregated_resources(request).await?.into_inner();
        Ok(Self { requests, responses })
    }

    async fn send(&self, request: DeltaDiscoveryRequest) -> anyhow::Result<()> {
        self.requests.send(request).await.context("request stream closed")
    }

    async fn next(&mut self) -> anyhow::Result<DeltaDiscoveryResponse> {
        let response = tokio::time::timeout(LIMIT, self.responses.message())
            .await
            .context("waiting for a response")??;
        response.context("stream ended")
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
    }
}

fn resource_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

fn uid(name: &str) -> String {
    format!("Kubernetes//Pod/default/{name}")
}

#[tokio::test]
async fn explicit_names_and_unsubscribe() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    publish(
        &store,
        &mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")])?,
    );
    let server = TestServer::start(Arc::clone(&store), Arc::new(AllowAll), any_addr()).await?;
    let mut stream = RawStream::open(&server, None).await?;

    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.to_owned(),
            resource_names_subscribe: vec![uid("a"), uid("b")],
            ..Default::default()
        })
        .await?;
    let first = stream.next().await?;
    assert_eq!(resource_names(&first), [uid("a"), uid("b")]);
    stream.ack(&first).await?;

    // A change to an unsubscribed name is not sent; one to a subscribed name is.
    publish(
        &store,
        &mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.33")])?,
    );
    publish(
        &store,
        &mesh(&[("a", "10.0.0.11"), ("b", "10.0.0.2"), ("c", "10.0.0.33")])?,
    );
    let change = stream.next().await?;
    assert_eq!(resource_names(&change), [uid("a")]);
    stream.ack(&change).await?;

    // After unsubscribing a, its changes stop; b's still come; a newly subscribed name is sent.
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.to_owned(),
            resource_names_unsubscribe: vec![uid("a")],
            resource_names_subscribe: vec![uid("c")],
            ..Default::default()
        })
        .await?;
    let subscribed = stream.next().await?;
    assert_eq!(resource_names(&subscribed), [uid("c")]);
    publish(
        &store,
        &mesh(&[("a", "10.0.0.12"), ("b", "10.0.0.22"), ("c", "10.0.0.33")])?,
    );
    let change = stream.next().await?;
    assert_eq!(resource_names(&change), [uid("b")]);
    // Deleting a subscribed name sends a removal.
    publish(&store, &mesh(&[("a", "10.0.0.12"), ("c", "10.0.0.33")])?);
    let removal = stream.next().await?;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, [uid("b")]);
    server.stop().await
}

#[tokio::test]
async fn reconnect_after_restart_gets_exactly_the_difference() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    publish(
        &store,
        &mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")])?,
    );
    let server = TestServer::start(Arc::clone(&store), Arc::new(AllowAll), any_addr()).await?;
    let addr = server.addr;
    let mut client = TestClient::start(config(&server));
    client.state_where("a b c", |s| names(s) == ["a", "b", "c"]).await?;
    server.stop().await?;

    // While the client is disconnected: b deleted, c changed, d added; a unchanged.
    let store = ResourceStore::new(1024);
    publish(
        &store,
        &mesh(&[("a", "10.0.0.1"), ("c", "10.0.0.33"), ("d", "10.0.0.4")])?,
    );
    let server = TestServer::start(Arc::clone(&store), Arc::new(AllowAll), addr).await?;
    let state = client.state_where("a c d", |s| names(s) == ["a", "c", "d"]).await?;
    assert!(state.workload_by_ip("10.0.0.33".parse()?).is_some());
    // c and d sent, b removed; a and the unchanged policy not resent.
    assert_eq!(server.metrics.resources_sent(ADDRESS_TYPE_URL), 3);
    assert_eq!(server.metrics.resources_sent(AUTHORIZATION_TYPE_URL), 0);
    assert!(client.status.borrow().connects >= 2);
    server.stop().await
}

#[tokio::test]
async fn invalid_resource_is_nacked_and_last_good_state_kept() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    publish(&store, &mesh(&[("a", "10.0.0.1")])?);
    let server = TestServer::start(Arc::clone(&store), Arc::new(AllowAll), any_addr()).await?;
    let mut client = TestClient::start(config(&server));
    client.state_where("a", |s| names(s) == ["a"]).await?;

    let bad = wl::Workload {
        uid: uid("bad"),
        name: "bad".to_owned(),
        namespace: "default".to_owned(),
        addresses: vec![vec![1, 2, 3]],
        ..Default::default()
    };
    store.upsert(
        ADDRESS_TYPE_URL,
        &uid("bad"),
        address_any(wl::address::Type::Workload(bad)),
    );
    client.status_where("a rejection", |s| s.rejected == 1).await?;
    tokio::time::timeout(LIMIT, async {
        while server.metrics.nacks(ADDRESS_TYPE_URL) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .context("server counts the NACK")?;
    assert_eq!(names(&client.state.borrow()), ["a"]);

    // The next good change is applied on top of the last good state.
    store.remove(ADDRESS_TYPE_URL, &uid("bad"));
    publish(&store, &mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")])?);
    client.state_where("a b", |s| names(s) == ["a", "b"]).await?;
    server.stop().await
}

/// Accepts exactly one token.
struct OneToken(&'static str);

impl Authenticator for OneToken {
    fn authenticate<'a>(&'a self, metadata: &'a MetadataMap) -> BoxFuture<'a, Result<ClientIdentity, Status>> {
        Box::pin(async move {
            let token = bearer_token(metadata)?;
            if token == self.0 {
                Ok(ClientIdentity {
                    name: "ztunnel".to_owned(),
                })
            } else {
                Err(Status::unauthenticated(
                    "bearer token rejected: not a ztunnel service account token",
                ))
            }
        })
    }
}

#[tokio::test]
async fn authentication_failure_is_refused_with_the_message() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    let server = TestServer::start(Arc::clone(&store), Arc::new(OneToken("good")), any_addr()).await?;

    let refused = async |token| match RawStream::open(&server, token).await {
        Ok(_) => Err(anyhow::anyhow!("stream with token {token:?} was accepted")),
        Err(status) => Ok(status),
    };
    let status = refused(Some("bad")).await?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("bearer token rejected"), "{status}");
    let status = refused(None).await?;
    assert!(status.message().contains("no authorization header"), "{status}");

    // The ztunnel client reads its token fresh from the file on each connect.
    let dir = std::env::temp_dir().join(format!("ambit-xds-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("token");
    std::fs::write(&path, "bad\n")?;
    let mut config = config(&server);
    config.token = TokenSource::File(path.clone());
    let mut client = TestClient::start(config);
    std::fs::write(&path, "good\n")?;
    client.status_where("synced after token rotation", |s| s.synced).await?;
    std::fs::remove_dir_all(&dir)?;
    server.stop().await
}

#[tokio::test]
async fn burst_is_coalesced_into_one_push() -> anyhow::Result<()> {
    let store = ResourceStore::new(1024);
    let config = ServerConfig {
        debounce_quiet: Duration::from_millis(300),
        debounce_max_delay: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(Arc::clone(&store), Arc::new(AllowAll), any_addr(), config).await?;
    let mut client = TestClient::start(crate::config(&server));
    client.status_where("synced", |s| s.synced).await?;
    let pushes_before = server.metrics.pushes(ADDRESS_TYPE_URL);

    let mut workloads = Vec::new();
    for i in 1..=50 {
        workloads.push((format!("w{i}"), format!("10.0.1.{i}")));
        let list: Vec<(&str, &str)> = workloads.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect();
        publish(&store, &mesh(&list)?);
    }
    client.state_where("all 50", |s| s.workloads().count() == 50).await?;
    assert_eq!(server.metrics.pushes(ADDRESS_TYPE_URL) - pushes_before, 1);
    server.stop().await
}

#[test]
fn resource_versions_are_content_hashes() {
    let a = ResourceStore::new(8);
    let b = ResourceStore::new(8);
    let any = address_any(wl::address::Type::Workload(wl::Workload {
        name: "x".to_owned(),
        ..Default::default()
    }));
    assert!(a.upsert(ADDRESS_TYPE_URL, "x", any.clone()));
    assert!(
        !a.upsert(ADDRESS_TYPE_URL, "x", any.clone()),
        "same bytes are no change"
    );
    b.upsert(ADDRESS_TYPE_URL, "x", any);
    assert_eq!(a.version(ADDRESS_TYPE_URL, "x"), b.version(ADDRESS_TYPE_URL, "x"));
    let replaced = a.replace_all(ADDRESS_TYPE_URL, BTreeMap::new());
    assert_eq!((replaced, a.is_empty(ADDRESS_TYPE_URL)), (1, true));
}

//! The CA service and ztunnel's CA client together, in-process on loopback: authentication,
//! authorization, CSR checks, root persistence, and rotation under a live mTLS connection.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{CertificateAuthority, CertificateRequest, SpiffeId, TrustBundle};
use ambit_proto::istio::v1::auth::IstioCertificateRequest;
use ambit_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_ztunnel::certs::{CaClient, CaClientConfig, CertError, CertManager};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const TD: &str = "cluster.local";
const TOKENS: &str = "tokens:
  - token: ztunnel-a-token
    namespace: ambit-system
    serviceAccount: ztunnel
    node: node-a
  - token: ztunnel-b-token
    namespace: ambit-system
    serviceAccount: ztunnel
    node: node-b
  - token: cart-token
    namespace: shop
    serviceAccount: cart
  - token: expired-token
    namespace: ambit-system
    serviceAccount: ztunnel
    node: node-a
    expiresAt: 2020-01-01T00:00:00Z
";

/// `shop/cart` and `shop/db` run on node-a, nothing on node-b.
struct Pods(HashSet<(&'static str, &'static str, &'static str)>);

impl NodeDirectory for Pods {
    fn has_identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.0
            .iter()
            .any(|&(n, ns, sa)| (n, ns, sa) == (node, namespace, service_account))
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).expect("id")
}

struct Mesh {
    dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
    address: String,
    registry: Arc<std::sync::Mutex<Registry>>,
}

impl Mesh {
    async fn start() -> Mesh {
        Self::start_with(None).await
    }

    /// A CA service on loopback; with `tls_name`, served over TLS with a certificate for that
    /// name signed by the mesh root.
    async fn start_with(tls_name: Option<&str>) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tokens.yaml"), TOKENS).expect("tokens");
        let ca = Arc::new(load_or_generate_in_dir(&dir.path().join("state"), TD).expect("ca"));
        let nodes = Pods(HashSet::from([("node-a", "shop", "cart"), ("node-a", "shop", "db")]));
        let tokens = BootstrapTokens::from_file(dir.path().join("tokens.yaml")).expect("tokens");
        let mut registry = Registry::default();
        let service = CaService::new(
            ca.clone(),
            Arc::new(tokens),
            Arc::new(nodes),
            CaConfig::new(TD),
            &mut registry,
        );
        let tls = tls_name.map(|name| {
            let serving = ca
                .issue_serving(&[name.to_owned()], Duration::from_secs(3600))
                .expect("serving");
            let chain = CertificateDer::pem_slice_iter(serving.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).expect("key");
            let mut config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .expect("server config");
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        });
        let addr = serve(service, tls.clone()).await;
        let address = match tls {
            Some(_) => format!("https://{addr}"),
            None => format!("http://{addr}"),
        };
        Mesh {
            dir,
            ca,
            address,
            registry: Arc::new(std::sync::Mutex::new(registry)),
        }
    }

    fn token_file(&self, token: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("{token}.jwt"));
        std::fs::write(&path, format!("{token}\n")).expect("token file");
        path
    }

    fn client(&self, token: &str, ttl: Duration) -> CaClient {
        CaClient::new(CaClientConfig {
            address: self.address.clone(),
            root_pem: Some(self.ca.root_pem()),
            server_name: None,
            token_path: self.token_file(token),
            ttl,
        })
        .expect("client")
    }

    fn trust(&self) -> TrustBundle {
        self.ca.trust_bundle().expect("trust")
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().expect("registry");
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }
}

async fn serve(service: CaService, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = service.into_server();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = TowerToHyperService::new(server.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => http2.serve_connection(TokioIo::new(tcp), service).await,
                    Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                        Ok(stream) => http2.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    addr
}

fn refused(err: CertError) -> (tonic::Code, String) {
    match err {
        CertError::Refused { code, message, .. } => (code, message),
        other => panic!("expected a refusal from the CA, got {other}"),
    }
}

#[tokio::test]
async fn ztunnel_gets_certificates_for_pods_on_its_node() {
    let mesh = Mesh::start().await;
    let client = mesh.client("ztunnel-a-token", Duration::from_secs(600));
    let cert = client.fetch(&id("shop", "cart")).await.expect("certificate");
    assert_eq!(cert.identity(), &id("shop", "cart"));
    assert_eq!(cert.chain().len(), 1, "the root is not kept in the chain");
    let lifetime = cert.not_after().duration_since(cert.not_before()).expect("ordered");
    assert_eq!(
        lifetime.as_secs(),
        600 + ambit_identity::ca::CLOCK_SKEW_ALLOWANCE.as_secs()
    );

    let certs = CertManager::remote(client, mesh.trust());
    certs.server_config(&id("shop", "db")).await.expect("server config");
    assert_eq!(certs.summaries().len(), 1);
    assert!(
        mesh.metrics().contains("ambit_ca_certificates_issued_total 2"),
        "{}",
        mesh.metrics()
    );
}

#[tokio::test]
async fn ztunnel_over_tls_verifies_the_operator_name_against_the_mesh_root() {
    let mesh = Mesh::start_with(Some("ambit-ca.ambit-system.svc")).await;
    let mut config = CaClientConfig {
        address: mesh.address.clone(),
        root_pem: Some(mesh.ca.root_pem()),
        server_name: Some("ambit-ca.ambit-system.svc".to_owned()),
        token_path: mesh.token_file("ztunnel-a-token"),
        ttl: Duration::from_secs(600),
    };
    let client = CaClient::new(config.clone()).expect("client");
    client.fetch(&id("shop", "cart")).await.expect("certificate over TLS");

    config.server_name = Some("impostor.example".to_owned());
    let err = CaClient::new(config.clone())
        .expect("client")
        .fetch(&id("shop", "cart"))
        .await
        .expect_err("wrong name");
    assert!(
        matches!(
            err,
            CertError::Refused {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{err}"
    );

    config.server_name = Some("ambit-ca.ambit-system.svc".to_owned());
    config.root_pem = Some(CertificateAuthority::generate(TD).expect("other").root_pem());
    let err = CaClient::new(config).expect("client").fetch(&id("shop", "cart")).await;
    assert!(err.is_err(), "an operator outside the mesh root is not trusted");
}

#[tokio::test]
async fn pod_on_another_node_is_refused_naming_identity_and_node() {
    let mesh = Mesh::start().await;
    let client = mesh.client("ztunnel-b-token", Duration::from_secs(600));
    let (code, message) = refused(client.fetch(&id("shop", "cart")).await.expect_err("other node"));
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(message.contains("spiffe://cluster.local/ns/shop/sa/cart"), "{message}");
    assert!(message.contains("node-b"), "{message}");
    assert!(mesh.metrics().contains("reason=\"not_on_node\""), "{}", mesh.metrics());
}

#[tokio::test]
async fn csr_for_another_identity_than_requested_is_invalid() {
    let mesh = Mesh::start().await;
    let channel = tonic::transport::Endpoint::from_shared(mesh.address.clone())
        .expect("endpoint")
        .connect_lazy();
    let csr = CertificateRequest::generate(&id("shop", "db")).expect("csr");
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr.csr_pem().to_owned(),
        validity_duration: 600,
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id("shop", "cart").to_string())),
                },
            )]),
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer ztunnel-a-token".parse().expect("ascii"));
    let status = IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .expect_err("SAN mismatch");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("spiffe://cluster.local/ns/shop/sa/db"),
        "{status:?}"
    );
    assert!(
        status.message().contains("spiffe://cluster.local/ns/shop/sa/cart"),
        "{status:?}"
    );
}

#[tokio::test]
async fn unknown_expired_and_foreign_tokens_are_refused_clearly() {
    let mesh = Mesh::start().await;
    let ttl = Duration::from_secs(600);
    let cart = id("shop", "cart");

    let (code, message) = refused(mesh.client("who-knows", ttl).fetch(&cart).await.expect_err("unknown"));
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("unknown bootstrap token"), "{message}");

    let (code, message) = refused(
        mesh.client("expired-token", ttl)
            .fetch(&cart)
            .await
            .expect_err("expired"),
    );
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("expired"), "{message}");

    // A workload's own token gets its own identity, but not a neighbour's.
    mesh.client("cart-token", ttl).fetch(&cart).await.expect("own identity");
    let (code, message) = refused(
        mesh.client("cart-token", ttl)
            .fetch(&id("shop", "db"))
            .await
            .expect_err("not its own"),
    );
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(
        message.contains("shop/cart") && message.contains("spiffe://cluster.local/ns/shop/sa/db"),
        "{message}"
    );
    let metrics = mesh.metrics();
    assert!(metrics.contains("reason=\"unauthenticated\"} 2"), "{metrics}");
    assert!(metrics.contains("reason=\"not_own_identity\"} 1"), "{metrics}");
}

#[test]
fn generated_root_is_persisted_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let first = load_or_generate_in_dir(&state, TD).expect("generated");
    let again = load_or_generate_in_dir(&state, TD).expect("reloaded");
    assert_eq!(first.root_der(), again.root_der());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(state.join(CA_KEY_KEY))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    write_root_file(&state, &first.root_pem()).expect("root file");
    let published = std::fs::read_to_string(state.join(ROOT_FILE)).expect("read");
    assert_eq!(published, first.root_pem());

    std::fs::remove_file(state.join(CA_CERT_KEY)).expect("remove");
    let err = load_or_generate_in_dir(&state, TD).expect_err("half present");
    assert!(err.to_string().contains(CA_CERT_KEY), "{err}");
}

#[test]
fn user_supplied_intermediate_signs_chains_ending_at_the_real_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = CertificateAuthority::generate(TD).expect("root");
    let intermediate = root
        .issue_intermediate("team intermediate", Duration::from_secs(3600))
        .expect("intermediate");
    // `cert_pem` of the intermediate is itself followed by the root: split it the way users
    // supply it, certificate and chain apart.
    let own = intermediate.cert_pem();
    let own = own
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .expect("first block");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert = write("ca-cert.pem", own);
    let key = write("ca-key.pem", &intermediate.key_pem());
    let chain = write("cert-chain.pem", &root.root_pem());
    let loaded = load_ca_files(&cert, &key, Some(&chain)).expect("loaded");
    assert_eq!(loaded.root_der(), root.root_der());

    let wanted = id("shop", "cart");
    let csr = CertificateRequest::generate(&wanted).expect("csr");
    let signed = loaded
        .sign_request(csr.csr_pem(), &wanted, Duration::from_secs(60))
        .expect("signed");
    assert_eq!(signed.len(), 3);
    assert_eq!(signed.last(), Some(&root.root_pem()));

    let secret = k8s_openapi::api::core::v1::Secret {
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_owned(), k8s_openapi::ByteString(own.as_bytes().to_vec())),
            (
                CA_KEY_KEY.to_owned(),
                k8s_openapi::ByteString(intermediate.key_pem().into_bytes()),
            ),
            (
                ROOT_CERT_KEY.to_owned(),
                k8s_openapi::ByteString(root.root_pem().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    let from_secret = root::ca_from_secret(&secret).expect("from secret");
    assert_eq!(from_secret.root_der(), root.root_der());
    assert_eq!(
        root_config_map("shop", &root.root_pem()).data.expect("data")[ROOT_CONFIGMAP_KEY],
        root.root_pem()
    );
}

/// Reads what the echo server sends back, proving the connection still carries data.
async fn echo(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), text: &[u8]) {
    stream.write_all(text).await.expect("write");
    let mut back = vec![0; text.len()];
    stream.read_exact(&mut back).await.expect("read");
    assert_eq!(back, text);
}

fn peer_not_after(conn: &rustls::CommonState) -> std::time::SystemTime {
    let leaf = conn.peer_certificates().and_then(|c| c.first()).expect("peer cert");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("x509");
    std::time::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().unsigned_abs())
}

#[tokio::test]
async fn rotation_renews_at_half_life_without_dropping_open_connections() {
    let mesh = Mesh::start().await;
    let ttl = Duration::from_secs(3);
    let certs = Arc::new(CertManager::remote(mesh.client("ztunnel-a-token", ttl), mesh.trust()));
    let (cart, db) = (id("shop", "cart"), id("shop", "db"));

    // `db` serves echo over mTLS, taking the newest config for every handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_certs = certs.clone();
    let server_id = db.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = server_certs.server_config(&server_id).await.expect("server config");
            tokio::spawn(async move {
                let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let connect = |certs: Arc<CertManager>| {
        let (cart, db) = (cart.clone(), db.clone());
        async move {
            let config = certs
                .client_config(&cart, std::slice::from_ref(&db))
                .await
                .expect("client config");
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tokio_rustls::TlsConnector::from(config)
                .connect(ambit_identity::server_name(), tcp)
                .await
                .expect("handshake")
        }
    };

    let mut long_lived = connect(certs.clone()).await;
    echo(&mut long_lived, b"first").await;
    let first_expiry = peer_not_after(long_lived.get_ref().1);

    // Past the first certificate's expiry: renewed at ~1.5 s in the background.
    let now = std::time::SystemTime::now();
    let until_expired = first_expiry.duration_since(now).unwrap_or_default();
    tokio::time::sleep(until_expired + Duration::from_millis(1200)).await;
    assert!(std::time::SystemTime::now() > first_expiry);
    echo(&mut long_lived, b"still carrying data past expiry").await;
    // Renewed in the background: nothing has asked for `db`'s certificate since the first one.
    let shown = certs.summaries();
    let db_now = shown.iter().find(|s| s.identity == db.to_string()).expect("db cached");
    let first_shown = humantime::format_rfc3339_seconds(first_expiry).to_string();
    assert_ne!(db_now.not_after, first_shown, "renewed before anyone asked");

    let mut fresh = connect(certs.clone()).await;
    echo(&mut fresh, b"new").await;
    let second_expiry = peer_not_after(fresh.get_ref().1);
    assert!(
        second_expiry > first_expiry,
        "new handshakes present the renewed certificate"
    );
    assert!(second_expiry > std::time::SystemTime::now());
}

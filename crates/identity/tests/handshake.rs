//! Full HBONE mTLS handshakes between the configs of this crate, over in-memory pipes.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_identity::tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use ambit_identity::{
    CertificateAuthority, SpiffeId, TlsError, TrustBundle, WorkloadCertificate, client_config, peer_identity,
    server_config, server_name,
};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const HOUR: Duration = Duration::from_secs(3600);

fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, ns, sa).expect("valid id")
}

struct Mesh {
    ca: CertificateAuthority,
    trust: TrustBundle,
}

impl Mesh {
    fn new(trust_domain: &str) -> Self {
        let ca = CertificateAuthority::generate(trust_domain).expect("ca");
        let trust = ca.trust_bundle().expect("bundle");
        Self { ca, trust }
    }

    fn issue(&self, id: &SpiffeId) -> WorkloadCertificate {
        self.ca.issue(id, HOUR).expect("issue")
    }

    fn expired(&self, id: &SpiffeId) -> WorkloadCertificate {
        let now = SystemTime::now();
        self.ca
            .issue_with_validity(id, now - 2 * HOUR, now - HOUR)
            .expect("issue")
    }
}

struct Outcome {
    client: io::Result<client::TlsStream<tokio::io::DuplexStream>>,
    server: io::Result<server::TlsStream<tokio::io::DuplexStream>>,
}

async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let (client_io, server_io) = duplex(64 * 1024);
    let connector = TlsConnector::from(client);
    let acceptor = TlsAcceptor::from(server);
    let (client, server) = tokio::join!(connector.connect(server_name(), client_io), acceptor.accept(server_io));
    Outcome { client, server }
}

/// The server refused the client: its accept failed with `needle` in the error, and the client,
/// which in TLS 1.3 may finish its side of the handshake first, cannot read anything.
async fn assert_server_refused(outcome: Outcome, needle: &str) {
    let err = outcome.server.expect_err("server must refuse the client");
    assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    if let Ok(mut client) = outcome.client {
        let mut buf = [0u8; 16];
        let read = client.read(&mut buf).await;
        assert!(matches!(read, Err(_) | Ok(0)), "client read after refusal: {read:?}");
    }
}

fn assert_client_refused(outcome: &Outcome, needles: &[&str]) {
    let err = outcome.client.as_ref().expect_err("client must refuse the server");
    for needle in needles {
        assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    }
    assert!(outcome.server.is_err(), "server must see the abort");
}

#[tokio::test]
async fn matching_identities_connect_and_see_each_other() {
    let mesh = Mesh::new("cluster.local");
    let alice = id("cluster.local", "default", "alice");
    let bob = id("cluster.local", "other", "bob");
    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let mut client = outcome.client.expect("client handshake");
    let mut server = outcome.server.expect("server handshake");

    assert_eq!(peer_identity(client.get_ref().1).expect("server id"), bob);
    assert_eq!(peer_identity(server.get_ref().1).expect("client id"), alice);

    let sides: [&rustls::CommonState; 2] = [client.get_ref().1, server.get_ref().1];
    for common in sides {
        assert_eq!(common.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(common.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let suite = common.negotiated_cipher_suite().expect("suite").suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn any_expected_identity_is_accepted_and_intermediates_are_sent() {
    let mesh = Mesh::new("td");
    let intermediate = mesh
        .ca
        .issue_intermediate("ambit intermediate", HOUR)
        .expect("intermediate");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let client_cert = intermediate.issue(&alice, HOUR).expect("issue");
    let server_cert = intermediate.issue(&bob, HOUR).expect("issue");
    let expected = [id("td", "ns", "carol"), bob.clone()];
    let client_cfg = client_config(&client_cert, &mesh.trust, &expected).expect("cfg");
    let server_cfg = server_config(&server_cert, &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let client = outcome.client.expect("client handshake");
    let server = outcome.server.expect("server handshake");
    assert_eq!(peer_identity(client.get_ref().1).expect("server id"), bob);
    assert_eq!(peer_identity(server.get_ref().1).expect("client id"), alice);
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_identity() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let mallory = id("td", "ns", "mallory");
    let bob = id("td", "ns", "bob");
    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&mallory), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    assert_client_refused(&outcome, &["spiffe://td/ns/ns/sa/mallory", "spiffe://td/ns/ns/sa/bob"]);
    let err = outcome.client.expect_err("refused");
    match TlsError::find_in(&err) {
        Some(TlsError::UnexpectedPeer { found, expected }) => {
            assert_eq!(found, &mallory);
            assert_eq!(expected, &[bob]);
        }
        other => panic!("expected UnexpectedPeer in {err}, found {other:?}"),
    }
}

#[tokio::test]
async fn server_refuses_a_client_from_another_trust_domain_under_the_same_root() {
    let mesh = Mesh::new("td-a");
    let bob = id("td-a", "ns", "bob");
    let intruder = id("td-b", "ns", "alice");
    let client_cfg = client_config(&mesh.issue(&intruder), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(client_cfg, server_cfg).await;
    let err = outcome.server.as_ref().expect_err("refused");
    assert!(
        matches!(
            TlsError::find_in(err),
            Some(TlsError::ForeignTrustDomain { peer, local }) if *peer == intruder && local == "td-a"
        ),
        "{err}"
    );
    assert_server_refused(outcome, "spiffe://td-b/ns/ns/sa/alice").await;
}

#[tokio::test]
async fn certificates_from_another_root_are_refused_both_ways() {
    let mesh = Mesh::new("td");
    // Same trust domain and subject name as the real root, different key.
    let rogue = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");

    // A client signed by a root the server does not trust.
    let client_cfg = client_config(&rogue.issue(&alice), &rogue.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    // The rogue client also distrusts the server, so it aborts first; check that direction...
    let outcome = handshake(client_cfg, server_cfg.clone()).await;
    assert_client_refused(&outcome, &["invalid peer certificate: BadSignature"]);

    // ...and a rogue client that does trust our root is refused by the server.
    let client_cfg = client_config(&rogue.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    assert_server_refused(outcome, "invalid peer certificate: BadSignature").await;

    // A root with another name altogether is not even a candidate issuer.
    let stranger = Mesh::new("elsewhere");
    let client_cfg = client_config(&stranger.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    let outcome = handshake(client_cfg, server_cfg).await;
    assert_server_refused(outcome, "UnknownIssuer").await;
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");

    let client_cfg = client_config(&mesh.expired(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");
    assert_server_refused(handshake(client_cfg, server_cfg).await, "expired").await;

    let client_cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&mesh.expired(&bob), &mesh.trust).expect("cfg");
    assert_client_refused(&handshake(client_cfg, server_cfg).await, &["expired"]);
}

/// Offers no client certificate, whatever the server asks for.
#[derive(Debug)]
struct NoClientCertificate;

impl ResolvesClientCert for NoClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let bob = id("td", "ns", "bob");
    let ours = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&bob)).expect("cfg");
    let mut anonymous = (*ours).clone();
    anonymous.client_auth_cert_resolver = Arc::new(NoClientCertificate);
    let server_cfg = server_config(&mesh.issue(&bob), &mesh.trust).expect("cfg");

    let outcome = handshake(Arc::new(anonymous), server_cfg).await;
    assert_server_refused(outcome, "no certificates").await;
}

#[test]
fn client_config_needs_an_expected_identity() {
    let mesh = Mesh::new("td");
    let cert = mesh.issue(&id("td", "ns", "alice"));
    assert!(matches!(
        client_config(&cert, &mesh.trust, &[]),
        Err(TlsError::NoExpectedIdentity)
    ));
}

#[test]
fn peer_identity_before_the_handshake_is_an_error() {
    let mesh = Mesh::new("td");
    let alice = id("td", "ns", "alice");
    let cfg = client_config(&mesh.issue(&alice), &mesh.trust, std::slice::from_ref(&alice)).expect("cfg");
    let conn = rustls::ClientConnection::new(cfg, server_name()).expect("connection");
    assert!(matches!(peer_identity(&conn), Err(TlsError::NoPeerCertificate)));
}

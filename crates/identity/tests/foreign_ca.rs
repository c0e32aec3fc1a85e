//! CA material made by other tools, in the forms Istio's CA leaves it: an RSA-2048 root whose key
//! is PKCS#1, and EC roots in SEC1, all written by the `openssl` CLI. Each is loaded, issues
//! workload certificates, and carries a full mTLS handshake; OpenSSL then verifies a leaf too.
//!
//! Needs the `openssl` CLI (3.x) on PATH, and fails rather than skips without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::tokio_rustls::{TlsAcceptor, TlsConnector};
use ambit_identity::{
    CaError, CertificateAuthority, SpiffeId, client_config, peer_identity, server_config, server_name,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const HOUR: Duration = Duration::from_secs(3600);

/// What Istio's self-signed root looks like: O = trust domain, a CA that signs certificates.
const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
O = cluster.local
CN = openssl root
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
";

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ambit-identity-{test}-{}", std::process::id()));
        // Left over from a killed run with a recycled pid, at worst.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        std::fs::write(dir.join("ca.cnf"), CA_CONFIG).expect("write openssl config");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).expect("read openssl output")
    }

    /// Runs `openssl args` in the scratch dir and returns its stdout.
    fn openssl(&self, args: &[&str]) -> String {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap_or_else(|err| panic!("these tests need the openssl CLI (3.x) on PATH: {err}"));
        assert!(
            output.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// A self-signed CA certificate `ca.pem` for the key in `key_file`.
    fn self_signed_ca(&self, key_file: &str) -> String {
        self.openssl(&[
            "req", "-x509", "-new", "-config", "ca.cnf", "-key", key_file, "-sha256", "-days", "2", "-out", "ca.pem",
        ]);
        self.read("ca.pem")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).expect("valid id")
}

async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> (SpiffeId, SpiffeId) {
    let (client_io, server_io) = duplex(64 * 1024);
    let connector = TlsConnector::from(client);
    let acceptor = TlsAcceptor::from(server);
    let (client, server) = tokio::join!(connector.connect(server_name(), client_io), acceptor.accept(server_io));
    let mut client = client.expect("client handshake");
    let mut server = server.expect("server handshake");
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    let seen_by_client = peer_identity(client.get_ref().1, "cluster.local").expect("server id");
    let seen_by_server = peer_identity(server.get_ref().1, "cluster.local").expect("client id");
    (seen_by_client, seen_by_server)
}

/// Loads the CA from `key_pem`, issues two workloads, connects them, and has OpenSSL verify a
/// leaf against the CA certificate (Istio's Go code will check our leaves the same way).
async fn assert_ca_works(scratch: &Scratch, cert_pem: &str, key_pem: &str) {
    let ca = CertificateAuthority::from_pem(cert_pem, key_pem).expect("load CA");
    let trust = ca.trust_bundle().expect("bundle");
    let (alice, bob) = (id("alice"), id("bob"));
    let client_cert = ca.issue(&alice, HOUR).expect("issue");
    let server_cert = ca.issue(&bob, HOUR).expect("issue");
    let client_cfg = client_config(&client_cert, &trust, std::slice::from_ref(&bob)).expect("cfg");
    let server_cfg = server_config(&server_cert, &trust).expect("cfg");
    assert_eq!(handshake(client_cfg, server_cfg).await, (bob, alice));

    std::fs::write(scratch.path().join("leaf.pem"), client_cert.leaf_pem()).expect("write leaf");
    let verified = scratch.openssl(&["verify", "-CAfile", "ca.pem", "leaf.pem"]);
    assert!(verified.contains("leaf.pem: OK"), "{verified}");

    // The key comes back out as PKCS#8 whatever form it went in, and loads again.
    assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).expect("reload CA");
    again.issue(&id("carol"), HOUR).expect("issue after reload");
}

#[tokio::test]
async fn rsa_2048_ca_in_pkcs1_and_pkcs8_form() {
    let scratch = Scratch::new("rsa");
    // `-traditional` writes PKCS#1, as Istio's self-signed CA does.
    scratch.openssl(&["genrsa", "-traditional", "-out", "ca-pkcs1.key", "2048"]);
    scratch.openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "ca-pkcs1.key",
        "-out",
        "ca-pkcs8.key",
    ]);
    let cert_pem = scratch.self_signed_ca("ca-pkcs1.key");

    let pkcs1 = scratch.read("ca-pkcs1.key");
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pkcs1}");
    assert_ca_works(&scratch, &cert_pem, &pkcs1).await;
    let pkcs8 = scratch.read("ca-pkcs8.key");
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
    assert_ca_works(&scratch, &cert_pem, &pkcs8).await;

    // A PKCS#1 key that is not the certificate's is refused as such.
    scratch.openssl(&["genrsa", "-traditional", "-out", "other.key", "2048"]);
    let err = CertificateAuthority::from_pem(&cert_pem, &scratch.read("other.key")).expect_err("wrong key");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

#[tokio::test]
async fn ec_ca_in_sec1_and_pkcs8_form() {
    for curve in ["prime256v1", "secp384r1"] {
        let scratch = Scratch::new(curve);
        scratch.openssl(&["ecparam", "-name", curve, "-genkey", "-noout", "-out", "ca-sec1.key"]);
        scratch.openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ca-sec1.key",
            "-out",
            "ca-pkcs8.key",
        ]);
        // SEC1 without its optional publicKey [1], which this CA then reads from the certificate.
        scratch.openssl(&[
            "ec",
            "-in",
            "ca-sec1.key",
            "-no_public",
            "-out",
            "ca-sec1-no-public.key",
        ]);
        let cert_pem = scratch.self_signed_ca("ca-sec1.key");

        for key_file in ["ca-sec1.key", "ca-sec1-no-public.key", "ca-pkcs8.key"] {
            let key_pem = scratch.read(key_file);
            let label = if key_file.contains("sec1") {
                "EC PRIVATE KEY"
            } else {
                "PRIVATE KEY"
            };
            assert!(
                key_pem.starts_with(&format!("-----BEGIN {label}-----")),
                "{curve} {key_file}: {key_pem}"
            );
            assert_ca_works(&scratch, &cert_pem, &key_pem).await;
        }

        // A SEC1 key without public key cannot borrow it from another CA's certificate.
        scratch.openssl(&["ecparam", "-name", curve, "-genkey", "-noout", "-out", "other.key"]);
        scratch.openssl(&["ec", "-in", "other.key", "-no_public", "-out", "other-no-public.key"]);
        for key_file in ["other.key", "other-no-public.key"] {
            let err = CertificateAuthority::from_pem(&cert_pem, &scratch.read(key_file)).expect_err("wrong key");
            assert!(matches!(err, CaError::KeyMismatch { .. }), "{curve} {key_file}: {err}");
        }
    }
}

#[test]
fn ec_ca_on_an_unsupported_curve_is_refused_naming_the_curve() {
    let scratch = Scratch::new("p521");
    scratch.openssl(&[
        "ecparam",
        "-name",
        "secp521r1",
        "-genkey",
        "-noout",
        "-out",
        "ca-sec1.key",
    ]);
    scratch.openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "ca-sec1.key",
        "-out",
        "ca-pkcs8.key",
    ]);
    let cert_pem = scratch.self_signed_ca("ca-sec1.key");
    for key_file in ["ca-sec1.key", "ca-pkcs8.key"] {
        let err = CertificateAuthority::from_pem(&cert_pem, &scratch.read(key_file)).expect_err("P-521");
        assert!(matches!(err, CaError::UnsupportedCurve { .. }), "{key_file}: {err}");
        assert!(err.to_string().contains("P-521 (1.3.132.0.35)"), "{key_file}: {err}");
    }
}

//! The operator's gRPC endpoint: workload xDS and the CA on one TLS port. The serving
//! certificate carries the operator's DNS names, is signed by the mesh CA and is re-issued at
//! half its life, so a long-running operator never serves an expired certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambit_identity::CertificateAuthority;
use ambit_identity::rustls::{self, server::ClientHello, server::ResolvesServerCert, sign::CertifiedKey};
use ambit_identity::tokio_rustls::TlsAcceptor;
use futures_util::StreamExt as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Lifetime of the serving certificate; it is renewed at half.
const SERVING_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot issue the operator's serving certificate for {names:?}: {reason}")]
    Certificate { names: Vec<String>, reason: String },
    #[error("cannot listen on {addr} (gRPC): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Issues and caches the serving certificate.
#[derive(Debug)]
struct ServingCert {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServingCert {
    fn new(ca: Arc<CertificateAuthority>, names: Vec<String>) -> Result<Self, GrpcError> {
        let first = issue(&ca, &names)?;
        Ok(ServingCert {
            ca,
            names,
            current: Mutex::new(first),
        })
    }
}

fn issue(ca: &CertificateAuthority, names: &[String]) -> Result<(Arc<CertifiedKey>, SystemTime), GrpcError> {
    let error = |reason: String| GrpcError::Certificate {
        names: names.to_vec(),
        reason,
    };
    let serving = ca.issue_serving(names, SERVING_TTL).map_err(|e| error(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(serving.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| error(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| error(e.to_string()))?;
    Ok((Arc::new(certified), SystemTime::now() + SERVING_TTL / 2))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.names) {
                Ok(fresh) => *current = fresh,
                // Keep serving the old one, still valid for another half life.
                Err(e) => tracing::warn!(error = %e, "cannot renew the serving certificate"),
            }
        }
        Some(current.0.clone())
    }
}

/// Binds `addr` now (a port clash fails start-up) and returns the TLS acceptor to serve with.
pub async fn bind(
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
) -> Result<(TcpListener, TlsAcceptor), GrpcError> {
    let resolver = Arc::new(ServingCert::new(ca, names)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| GrpcError::Certificate {
            names: Vec::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Bind { addr, source })?;
    Ok((listener, TlsAcceptor::from(Arc::new(config))))
}

/// Serves `router` on TLS connections from `listener` until `stop`. A failed handshake only
/// costs that connection.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: tonic::service::Routes,
    stop: CancellationToken,
) {
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await;
        Some((accepted, listener))
    })
    .filter_map(move |accepted| {
        let acceptor = acceptor.clone();
        async move {
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    return None;
                }
            };
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(Ok::<_, std::io::Error>(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "gRPC TLS handshake timed out");
                    None
                }
            }
        }
    });
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_routes(router)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

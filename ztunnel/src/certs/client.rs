//! The remote issuer: asks the operator's CA (`istio.v1.auth.IstioCertificateService`) to sign a
//! fresh key's CSR for a pod identity, as Istio's ztunnel does — bearer token read from a file on
//! every call (projected tokens rotate), the pod identity in `ImpersonatedIdentity` metadata.
//! Caching and renewal are the manager's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ambit_identity::{CertificateRequest, SpiffeId, WorkloadCertificate};
use ambit_proto::istio::v1::auth::IstioCertificateRequest;
use ambit_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use prost_types::value::Kind;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::CertError;

/// The metadata key Istio's ztunnel names the pod identity under (istio/ztunnel
/// `src/identity/caclient.rs`).
const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";

/// How long one CreateCertificate may take before it counts as failed and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the operator's CA is and how to talk to it.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `https://host:port`, or `http://host:port` for in-process tests (no TLS).
    pub address: String,
    /// The mesh root PEM the operator's serving certificate must chain to (needed for https).
    pub root_pem: Option<String>,
    /// The DNS name the operator's certificate must carry; defaults to the address's host.
    pub server_name: Option<String>,
    /// File holding the bearer token, re-read on every request.
    pub token_path: PathBuf,
    /// Lifetime asked for (`validity_duration`); the CA may shorten it.
    pub ttl: Duration,
}

/// A client of the operator's CA.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    address: String,
    token_path: PathBuf,
    ttl: Duration,
}

impl CaClient {
    /// A client that connects on first use and reconnects as needed. Must be called inside the
    /// tokio runtime (the channel's worker is spawned here).
    pub fn new(config: CaClientConfig) -> Result<Self, CertError> {
        let bad = |reason: String| CertError::CaAddress {
            address: config.address.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| bad(e.to_string()))?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if config.address.starts_with("https://") {
            let root = config
                .root_pem
                .as_deref()
                .ok_or_else(|| bad("https needs the mesh root to verify the operator".into()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root));
            if let Some(name) = &config.server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        } else if !config.address.starts_with("http://") {
            return Err(bad("the address must start with https:// (or http:// in tests)".into()));
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            address: config.address,
            token_path: config.token_path,
            ttl: config.ttl,
        })
    }

    /// A new key and a certificate for `id`, signed by the operator.
    pub async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCertificate, CertError> {
        let issue_error = |reason: String| CertError::Issue {
            identity: id.clone(),
            reason,
        };
        let token = tokio::fs::read_to_string(&self.token_path)
            .await
            .map_err(|e| issue_error(format!("cannot read the CA token {}: {e}", self.token_path.display())))?;
        let authorization = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| issue_error(format!("the CA token in {} is not ASCII", self.token_path.display())))?;
        let csr = CertificateRequest::generate(id).map_err(|e| issue_error(e.to_string()))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem().to_owned(),
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(prost_types::Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY_KEY.to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(id.to_string())),
                    },
                )]),
            }),
        });
        request.metadata_mut().insert("authorization", authorization);
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| CertError::Refused {
                identity: id.clone(),
                address: self.address.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        csr.into_certificate(&response.cert_chain)
            .map_err(|e| issue_error(e.to_string()))
    }
}

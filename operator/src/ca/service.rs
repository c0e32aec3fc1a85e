//! The `istio.v1.auth.IstioCertificateService` implementation: authenticate the bearer token,
//! work out the requested identity (the caller's own, or the `ImpersonatedIdentity` a ztunnel
//! names), authorize it, check the CSR names exactly that identity, sign, count. Every refusal
//! maps to its gRPC status here and nowhere else.

use std::sync::Arc;

use ambit_identity::{CertificateAuthority, CsrError, SpiffeId};
use ambit_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use prometheus_client::registry::Registry;
use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use super::auth::bearer_token;
use super::authorize::{NodeDirectory, authorize};
use super::metrics::CaMetrics;
use super::{AuthError, Authenticator, CaConfig, Caller, IMPERSONATED_IDENTITY_KEY};

/// The CA's gRPC service; mount [`CaService::into_server`] on the operator's gRPC server.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<dyn Authenticator>,
    nodes: Arc<dyn NodeDirectory>,
    config: CaConfig,
    metrics: CaMetrics,
}

impl CaService {
    /// A service signing with `ca`, authenticating with `authenticator`, and letting ztunnels
    /// impersonate the identities `nodes` places on their node. Registers its counters on
    /// `registry`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn Authenticator>,
        nodes: Arc<dyn NodeDirectory>,
        config: CaConfig,
        registry: &mut Registry,
    ) -> Self {
        Self {
            ca,
            authenticator,
            nodes,
            config,
            metrics: CaMetrics::new(registry),
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    async fn create(&self, request: Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, Refused> {
        let token = bearer_token(request.metadata()).map_err(Refused::auth)?;
        let caller = self.authenticator.authenticate(token).await.map_err(Refused::auth)?;
        let request = request.into_inner();
        let requested = self.requested_identity(&caller, &request)?;
        authorize(&self.config, self.nodes.as_ref(), &caller, &requested).map_err(|refusal| Refused {
            reason: refusal.reason(),
            status: Status::permission_denied(refusal.to_string()),
        })?;
        let ttl = self.config.ttl_for(request.validity_duration);
        let cert_chain = self
            .ca
            .sign_request(&request.csr, &requested, ttl)
            .map_err(|err| csr_refusal(&err))?;
        tracing::info!(identity = %requested, %caller, ttl = ?ttl, "signed workload certificate");
        Ok(IstioCertificateResponse { cert_chain })
    }

    /// The identity asked for: the `ImpersonatedIdentity` metadata when present, else the
    /// caller's own.
    fn requested_identity(&self, caller: &Caller, request: &IstioCertificateRequest) -> Result<SpiffeId, Refused> {
        let impersonated = request
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.fields.get(IMPERSONATED_IDENTITY_KEY));
        match impersonated.map(|value| &value.kind) {
            None => SpiffeId::new(&self.config.trust_domain, &caller.namespace, &caller.service_account)
                .map_err(|err| Refused::invalid("caller_identity", format!("{caller} has no valid SPIFFE ID: {err}"))),
            Some(Some(Kind::StringValue(uri))) => uri.parse().map_err(|err| {
                Refused::invalid(
                    "bad_impersonated_identity",
                    format!("metadata {IMPERSONATED_IDENTITY_KEY}: {err}"),
                )
            }),
            Some(_) => Err(Refused::invalid(
                "bad_impersonated_identity",
                format!("metadata {IMPERSONATED_IDENTITY_KEY} must be a string holding a SPIFFE ID"),
            )),
        }
    }
}

/// A refused request: its gRPC status and its metric label.
struct Refused {
    reason: &'static str,
    status: Status,
}

impl Refused {
    fn auth(err: AuthError) -> Self {
        let reason = match err {
            AuthError::Unavailable { .. } => "authentication_unavailable",
            _ => "unauthenticated",
        };
        Self {
            reason,
            status: err.into(),
        }
    }

    fn invalid(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            status: Status::invalid_argument(message),
        }
    }
}

fn csr_refusal(err: &CsrError) -> Refused {
    let message = error_chain(err);
    match err {
        CsrError::SanMismatch { .. } => Refused::invalid("csr_identity_mismatch", message),
        CsrError::Sign { .. } => Refused {
            reason: "signing_failed",
            status: Status::internal(message),
        },
        _ => Refused::invalid("bad_csr", message),
    }
}

/// `err` and its sources on one line, so the client sees the whole reason.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        message.push_str(": ");
        message.push_str(&err.to_string());
        source = err.source();
    }
    message
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        match self.create(request).await {
            Ok(response) => {
                self.metrics.issued();
                Ok(Response::new(response))
            }
            Err(refused) => {
                self.metrics.refused(refused.reason);
                tracing::warn!(
                    reason = refused.reason,
                    message = refused.status.message(),
                    "certificate request refused"
                );
                Err(refused.status)
            }
        }
    }
}

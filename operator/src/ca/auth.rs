//! Who is calling the CA: the bearer token of the gRPC request, and the [`Authenticator`] seam
//! that turns it into a [`Caller`]. Implementations live in `bootstrap` (local mode) and
//! `token_review` (Kubernetes); what a caller may ask for is `authorize`'s business.

use futures_util::future::BoxFuture;
use tonic::metadata::MetadataMap;

/// An authenticated caller: a Kubernetes service account, and the node it runs on when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub node: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service account {}/{}", self.namespace, self.service_account)?;
        match &self.node {
            Some(node) => write!(f, " on node {node:?}"),
            None => f.write_str(" (node unknown)"),
        }
    }
}

/// Why a caller could not be authenticated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is missing, malformed, unknown, expired or not for us: the caller's fault.
    #[error("{reason}")]
    Unauthenticated { reason: String },
    /// The token could not be checked (API server unreachable, bad token file): fail closed.
    #[error("{reason}")]
    Unavailable { reason: String },
}

impl AuthError {
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::Unauthenticated { reason: reason.into() }
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable { reason: reason.into() }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated { reason } => tonic::Status::unauthenticated(reason),
            AuthError::Unavailable { reason } => tonic::Status::unavailable(reason),
        }
    }
}

/// Checks a bearer token. Boxed futures keep the trait object-safe, so the service holds an
/// `Arc<dyn Authenticator>` and tests plug in their own.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// The token of `authorization: Bearer <token>`, as Istio's ztunnel sends it.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| AuthError::unauthenticated("no authorization metadata: send `authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::unauthenticated("the authorization metadata is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::unauthenticated("the authorization metadata is not `Bearer <token>`"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::unauthenticated(
            "the authorization metadata is not `Bearer <token>`",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn bearer_token_is_taken_from_authorization() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(
            bearer_token(&metadata),
            Err(AuthError::Unauthenticated { .. })
        ));
        metadata.insert("authorization", MetadataValue::from_static("Bearer abc.def"));
        assert_eq!(bearer_token(&metadata).expect("token"), "abc.def");
        metadata.insert("authorization", MetadataValue::from_static("Basic abc"));
        assert!(bearer_token(&metadata).is_err());
        metadata.insert("authorization", MetadataValue::from_static("Bearer "));
        assert!(bearer_token(&metadata).is_err());
    }
}

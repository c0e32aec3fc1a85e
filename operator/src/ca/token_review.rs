//! Kubernetes mode authentication: a `TokenReview` (authentication.k8s.io/v1) asks the API server
//! whether the bearer token is a live service-account token for our audiences; the node comes
//! from the token's pod binding. An API server that cannot be reached fails the request closed.

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::{AuthError, Authenticator, Caller};

/// The audience ztunnel's projected token is minted for, as Istio's (`istio-ca`).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// `user.extra` keys the API server sets for tokens bound to a pod.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// What a successful review says about the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReviewedUser {
    pub namespace: String,
    pub service_account: String,
    pub node: Option<String>,
    pub pod: Option<String>,
}

/// The TokenReview-backed [`Authenticator`] of Kubernetes mode.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
}

impl TokenReviewAuthenticator {
    /// Reviews tokens with `client` and accepts them only for one of `audiences` (empty: the API
    /// server's own audience, as plain service-account tokens have).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self { client, audiences }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api.create(&PostParams::default(), &review).await.map_err(|err| {
            AuthError::unavailable(format!(
                "cannot review the token with the API server (is the operator allowed to create \
                 tokenreviews.authentication.k8s.io?): {err}"
            ))
        })?;
        let status = reviewed
            .status
            .ok_or_else(|| AuthError::unavailable("the API server returned a TokenReview without status"))?;
        let user = user_of_review(&status, &self.audiences)?;
        let node = match (user.node, &user.pod) {
            (Some(node), _) => Some(node),
            (None, Some(pod)) => self.node_of_pod(&user.namespace, pod).await?,
            (None, None) => None,
        };
        Ok(Caller {
            namespace: user.namespace,
            service_account: user.service_account,
            node,
        })
    }

    /// Older API servers bind tokens to a pod without naming its node: look the pod up.
    async fn node_of_pod(&self, namespace: &str, pod: &str) -> Result<Option<String>, AuthError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let found = api.get_opt(pod).await.map_err(|err| {
            AuthError::unavailable(format!(
                "cannot look up pod {namespace}/{pod} the token is bound to: {err}"
            ))
        })?;
        Ok(found.and_then(|pod| pod.spec).and_then(|spec| spec.node_name))
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.review(token))
    }
}

/// Reads the caller out of a TokenReview status: authenticated, for one of `audiences`, a
/// service account, with the pod binding when there is one.
pub(crate) fn user_of_review(status: &TokenReviewStatus, audiences: &[String]) -> Result<ReviewedUser, AuthError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(AuthError::unauthenticated(format!(
            "the API server did not authenticate the token: {why}"
        )));
    }
    if !audiences.is_empty() {
        let granted = status.audiences.as_deref().unwrap_or_default();
        if !granted.iter().any(|a| audiences.contains(a)) {
            return Err(AuthError::unauthenticated(format!(
                "the token is for audiences {granted:?}, not one of {audiences:?}"
            )));
        }
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| AuthError::unauthenticated("the TokenReview names no user"))?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
        .ok_or_else(|| {
            AuthError::unauthenticated(format!(
                "user {username:?} is not a service account (system:serviceaccount:<namespace>:<name>)"
            ))
        })?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .filter(|value| !value.is_empty())
            .cloned()
    };
    Ok(ReviewedUser {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        node: extra(NODE_NAME_EXTRA),
        pod: extra(POD_NAME_EXTRA),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> TokenReviewStatus {
        let review: TokenReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {},
            "status": json,
        }))
        .expect("review");
        review.status.expect("status")
    }

    fn audiences() -> Vec<String> {
        vec![DEFAULT_AUDIENCE.to_owned()]
    }

    #[test]
    fn bound_service_account_token_gives_namespace_account_and_node() {
        let status = status(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": {
                "username": "system:serviceaccount:ambit-system:ztunnel",
                "uid": "1",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/node-name": ["node-a"],
                    "authentication.kubernetes.io/pod-name": ["ztunnel-x7k2p"],
                    "authentication.kubernetes.io/pod-uid": ["abc"]
                }
            }
        }));
        let user = user_of_review(&status, &audiences()).expect("user");
        assert_eq!(
            user,
            ReviewedUser {
                namespace: "ambit-system".into(),
                service_account: "ztunnel".into(),
                node: Some("node-a".into()),
                pod: Some("ztunnel-x7k2p".into()),
            }
        );
    }

    #[test]
    fn pod_bound_token_without_node_keeps_the_pod_for_a_lookup() {
        let status = status(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": {
                "username": "system:serviceaccount:ambit-system:ztunnel",
                "extra": { "authentication.kubernetes.io/pod-name": ["ztunnel-1"] }
            }
        }));
        let user = user_of_review(&status, &audiences()).expect("user");
        assert_eq!((user.node, user.pod.as_deref()), (None, Some("ztunnel-1")));
    }

    #[test]
    fn refusals_say_why() {
        let expired = status(serde_json::json!({
            "authenticated": false,
            "error": "[invalid bearer token, service account token has expired]"
        }));
        let err = user_of_review(&expired, &audiences()).expect_err("expired");
        assert!(matches!(err, AuthError::Unauthenticated { .. }));
        assert!(err.to_string().contains("has expired"), "{err}");

        let wrong_audience = status(serde_json::json!({
            "authenticated": true,
            "audiences": ["https://kubernetes.default.svc"],
            "user": { "username": "system:serviceaccount:a:b" }
        }));
        let err = user_of_review(&wrong_audience, &audiences()).expect_err("audience");
        assert!(err.to_string().contains("istio-ca"), "{err}");

        let person = status(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": { "username": "alice@example.com" }
        }));
        let err = user_of_review(&person, &audiences()).expect_err("not a service account");
        assert!(err.to_string().contains("alice@example.com"), "{err}");
    }
}

//! Service account tokens: the `serviceaccounts/<name>/token` subresource (TokenRequest) issues
//! opaque tokens remembered by the emulator, and `tokenreviews` (TokenReview) validates them the
//! way the real server validates its JWTs: expiry against the emulator clock, audiences, and
//! that the service account and the bound pod still exist with the same uids.
//! Tokens are opaque strings, not JWTs; legacy secret-based tokens are not issued.

use serde_json::{Map, Value, json};

use crate::clock::{Clock, format_rfc3339};
use crate::error::ApiError;
use crate::names;
use crate::resources::GroupResource;
use crate::store::State;

const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MIN_EXPIRATION_SECONDS: i64 = 600;
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const NODE_UID: &str = "authentication.kubernetes.io/node-uid";
const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// What the emulator remembers about a token it issued.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    namespace: String,
    service_account: String,
    service_account_uid: String,
    audiences: Vec<String>,
    expires_unix: i64,
    /// `(name, uid)` of the pod the token is bound to.
    pod: Option<(String, String)>,
    /// `(name, uid)` of the node that pod ran on when the token was issued.
    node: Option<(String, Option<String>)>,
    credential_id: String,
}

fn core(resource: &str) -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: resource.to_owned(),
    }
}

fn uid_of(object: &Value) -> String {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Handles `POST .../serviceaccounts/<name>/token`; returns the `TokenRequest` response.
pub(crate) fn request_token(
    state: &mut State,
    clock: &Clock,
    api_audiences: &[String],
    namespace: &str,
    service_account: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "TokenRequest"
    {
        return Err(ApiError::bad_request(format!(
            "expected a TokenRequest body, got kind {kind}"
        )));
    }
    let account = state
        .get(&core("serviceaccounts"), namespace, service_account)
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", service_account))?;
    let service_account_uid = uid_of(account);
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            service_account,
            &[(
                "spec.expirationSeconds".to_owned(),
                format!("Invalid value: {expiration}: may not specify a duration less than 10 minutes"),
            )],
        ));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = api_audiences.to_vec();
    }
    let (pod, node) = match spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        None => (None, None),
        Some(reference) => bind(state, namespace, reference)?,
    };
    let now = clock.now_unix();
    let token = names::token();
    let issued = IssuedToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        service_account_uid,
        audiences: audiences.clone(),
        expires_unix: now + expiration,
        pod,
        node,
        credential_id: format!("JTI={}", names::uid()),
    };
    state.tokens.insert(token.clone(), issued);
    let mut response_spec = spec;
    if let Some(s) = response_spec.as_object_mut() {
        s.insert("audiences".to_owned(), json!(audiences));
        s.insert("expirationSeconds".to_owned(), json!(expiration));
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": service_account, "namespace": namespace, "creationTimestamp": format_rfc3339(now)},
        "spec": response_spec,
        "status": {"token": token, "expirationTimestamp": format_rfc3339(now + expiration)},
    }))
}

type Binding = (Option<(String, String)>, Option<(String, Option<String>)>);

fn bind(state: &State, namespace: &str, reference: &Value) -> Result<Binding, ApiError> {
    let field = |f: &str| reference.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    let (kind, name, uid) = (field("kind"), field("name"), field("uid"));
    let resource = match kind.as_str() {
        "Pod" => "pods",
        "Secret" => "secrets",
        other => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for object of type {other}"
            )));
        }
    };
    let object = state
        .get(&core(resource), namespace, &name)
        .ok_or_else(|| ApiError::not_found("", resource, &name))?;
    let actual_uid = uid_of(object);
    if !uid.is_empty() && uid != actual_uid {
        return Err(ApiError::conflict(
            "",
            &kind,
            &name,
            &format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    if kind != "Pod" {
        return Ok((None, None));
    }
    let node = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(|node| {
            let node_uid = state.get(&core("nodes"), "", node).map(uid_of);
            (node.to_owned(), node_uid)
        });
    Ok((Some((name, actual_uid)), node))
}

/// Handles `POST /apis/authentication.k8s.io/v1/tokenreviews`; returns the `TokenReview`.
pub(crate) fn review_token(
    state: &State,
    clock: &Clock,
    api_audiences: &[String],
    body: &Value,
) -> Result<Value, ApiError> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "TokenReview"
    {
        return Err(ApiError::bad_request(format!(
            "expected a TokenReview body, got kind {kind}"
        )));
    }
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
    let wanted: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| api_audiences.to_vec());
    let status = match authenticate(state, clock, token, &wanted) {
        Ok(status) => status,
        Err(error) => json!({"authenticated": false, "user": {}, "error": error}),
    };
    Ok(json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

fn authenticate(state: &State, clock: &Clock, token: &str, wanted: &[String]) -> Result<Value, String> {
    let issued = state.tokens.get(token).ok_or("invalid bearer token")?;
    if clock.now_unix() >= issued.expires_unix {
        return Err("[invalid bearer token, service account token has expired]".to_owned());
    }
    let audiences: Vec<&String> = issued.audiences.iter().filter(|a| wanted.contains(a)).collect();
    if audiences.is_empty() {
        return Err(format!(
            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
            issued.audiences, wanted
        ));
    }
    let account = state
        .get(&core("serviceaccounts"), &issued.namespace, &issued.service_account)
        .filter(|a| uid_of(a) == issued.service_account_uid)
        .ok_or_else(|| {
            format!(
                "[invalid bearer token, service account {}/{} has been deleted]",
                issued.namespace, issued.service_account
            )
        })?;
    let mut extra = Map::new();
    extra.insert(CREDENTIAL_ID.to_owned(), json!([issued.credential_id]));
    if let Some((pod, pod_uid)) = &issued.pod {
        let live = state.get(&core("pods"), &issued.namespace, pod).map(uid_of);
        if live.as_deref() != Some(pod_uid.as_str()) {
            return Err(format!(
                "[invalid bearer token, pod {}/{pod} has been deleted or recreated]",
                issued.namespace
            ));
        }
        extra.insert(POD_NAME.to_owned(), json!([pod]));
        extra.insert(POD_UID.to_owned(), json!([pod_uid]));
    }
    if let Some((node, node_uid)) = &issued.node {
        extra.insert(NODE_NAME.to_owned(), json!([node]));
        if let Some(node_uid) = node_uid {
            extra.insert(NODE_UID.to_owned(), json!([node_uid]));
        }
    }
    let namespace = &issued.namespace;
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{namespace}:{}", issued.service_account),
            "uid": uid_of(account),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "extra": extra,
        },
        "audiences": audiences,
    }))
}

//! Errors: `ApiError` is what a request handler fails with and is rendered as a `meta.k8s.io/v1`
//! `Status` in exactly one place ([`ApiError::to_status`]); `EmulatorError` is what starting the
//! emulator fails with.

use serde_json::{Value, json};

/// Why starting or configuring the emulator failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot bind the emulator to {addr}; check that the address is free and local")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The background server thread or runtime could not be started.
    #[error("cannot start the emulator's server thread")]
    Runtime(#[source] std::io::Error),
    /// The kubeconfig file could not be written.
    #[error("cannot write the kubeconfig to {path}; check the directory exists and is writable")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `reason` of a failure `Status`, as the real API server spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    BadRequest,
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    Expired,
    MethodNotAllowed,
    UnsupportedMediaType,
    RequestEntityTooLarge,
    InternalError,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Invalid => "Invalid",
            Reason::Expired => "Expired",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::InternalError => "InternalError",
        }
    }

    fn code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Invalid => 422,
            Reason::Expired => 410,
            Reason::MethodNotAllowed => 405,
            Reason::UnsupportedMediaType => 415,
            Reason::RequestEntityTooLarge => 413,
            Reason::InternalError => 500,
        }
    }
}

/// A request failure, rendered as a `Status` object with the matching HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    reason: Reason,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    /// `<resource>.<group> "<name>" not found`, the real server's wording.
    pub(crate) fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            Reason::NotFound,
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    pub(crate) fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            Reason::AlreadyExists,
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    pub(crate) fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        )
        .with_details(group, resource, name)
    }

    /// A `422 Invalid` naming the object and each offending field.
    pub(crate) fn invalid(group: &str, kind: &str, name: &str, causes: &[(String, String)]) -> Self {
        let summary: Vec<String> = causes.iter().map(|(field, why)| format!("{field}: {why}")).collect();
        let what = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, why)| json!({"reason": "FieldValueInvalid", "message": why, "field": field}))
            .collect();
        let mut err = Self::new(
            Reason::Invalid,
            format!("{what} \"{name}\" is invalid: {}", summary.join(", ")),
        );
        err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        err
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(Reason::Expired, message)
    }

    pub(crate) fn method_not_allowed(method: &str, what: &str) -> Self {
        Self::new(
            Reason::MethodNotAllowed,
            format!("the server does not allow the method {method} on {what}"),
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::InternalError, message)
    }

    fn with_details(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": resource}));
        self
    }

    pub(crate) fn code(&self) -> u16 {
        self.reason.code()
    }

    /// The `meta.k8s.io/v1` `Status` body of this failure.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code(),
        });
        if let Some(details) = &self.details {
            status["details"] = strip_empty_group(details.clone());
        }
        status
    }
}

fn strip_empty_group(mut details: Value) -> Value {
    if let Some(map) = details.as_object_mut()
        && map.get("group").and_then(Value::as_str) == Some("")
    {
        map.remove("group");
    }
    details
}

/// `resource` or `resource.group`, as used in the real server's messages.
pub(crate) fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

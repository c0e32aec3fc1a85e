//! Request dispatch: reads the body, maps a [`Route`] to its handler and renders failures as
//! `Status` objects. The handlers live in the submodules: discovery documents, OpenAPI stubs,
//! object verbs, watches and server-side `Table` printing.

mod discovery;
mod objects;
mod openapi;
mod table;
mod watch;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::error::{ApiError, Reason};
use crate::protobuf;
use crate::route::{self, Query, Route};
use crate::server::{Body, Shared, bytes_response, error_response, json_response};

/// The largest request body accepted, like the real server's 3 MiB limit.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// One parsed request, as the object handlers see it.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub(crate) method: Method,
    pub(crate) query: Query,
    pub(crate) accept: String,
    pub(crate) content_type: String,
    pub(crate) body: Bytes,
}

/// Answers one HTTP request.
pub(crate) async fn respond(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let failure = if too_large {
                ApiError::new(
                    Reason::RequestEntityTooLarge,
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {error}"))
            };
            return error_response(&failure);
        }
    };
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut content_type = header(http::header::CONTENT_TYPE);
    let body = if protobuf::is_protobuf(&content_type) && parts.method != Method::PATCH {
        match protobuf::decode(&body) {
            Ok(object) => {
                content_type = "application/json".to_owned();
                Bytes::from(object.to_string())
            }
            Err(error) => return error_response(&error),
        }
    } else {
        body
    };
    let request = ApiRequest {
        method: parts.method.clone(),
        query: Query::parse(parts.uri.query()),
        accept: header(http::header::ACCEPT),
        content_type,
        body,
    };
    tracing::debug!(method = %request.method, %path, query = parts.uri.query().unwrap_or(""), "request");
    let result = match route::parse(&path) {
        Route::Resource(resource) => objects::handle(shared, resource, request).await,
        Route::Health if request.method == Method::GET => Ok(bytes_response(
            200,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"ok"),
        )),
        Route::Unknown | Route::OpenApiV2 => Err(ApiError::new(
            Reason::NotFound,
            format!("the server could not find the requested resource ({path})"),
        )),
        _ if request.method != Method::GET => Err(ApiError::method_not_allowed(request.method.as_str(), &path)),
        Route::Version => Ok(json_response(200, &discovery::version())),
        Route::CoreVersions => Ok(json_response(200, &discovery::core_versions(shared.address))),
        Route::Groups => Ok(json_response(200, &discovery::groups(&shared.state().registry))),
        Route::Group(group) => discovery::group(&shared.state().registry, &group).map(|b| json_response(200, &b)),
        Route::ResourceList { group, version } => {
            discovery::resource_list(&shared.state().registry, &group, &version).map(|b| json_response(200, &b))
        }
        Route::OpenApiV3Index => Ok(json_response(200, &openapi::index(&shared.state().registry))),
        Route::OpenApiV3 { group, version } => {
            openapi::group_version(&shared.state().registry, &group, &version).map(|b| json_response(200, &b))
        }
        Route::Health => Err(ApiError::method_not_allowed(request.method.as_str(), &path)),
    };
    result.unwrap_or_else(|error| {
        tracing::debug!(%path, %error, "request failed");
        error_response(&error)
    })
}

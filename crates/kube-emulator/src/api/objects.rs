//! The object verbs under `/api/v1/...` and `/apis/<group>/<version>/...`: get, list (selectors,
//! pagination), create, update, patch (merge, JSON, strategic, apply), delete and
//! deletecollection, plus the TokenRequest and TokenReview endpoints. Watches are handed to
//! `watch`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, Response};
use serde_json::{Value, json};

use super::{ApiRequest, table, watch};
use crate::apply::apply_configuration;
use crate::delete;
use crate::error::{ApiError, Reason};
use crate::patch::{PatchType, apply_patch};
use crate::resources::{Behavior, ResourceDef};
use crate::route::{Query, ResourcePath};
use crate::selector::{FieldSelector, LabelSelector, supported_fields};
use crate::server::{Body, Shared, json_response};
use crate::store::ApplyKey;
use crate::tokens;
use crate::write::{self, FieldValidation};

/// Dispatches a request addressed to objects of a resource.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    path: ResourcePath,
    request: ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let def = shared
        .state()
        .registry
        .find(&path.group, &path.version, &path.plural)
        .ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server could not find the requested resource ({})", path.plural),
            )
        })?;
    if path.namespace.is_some() && !def.namespaced {
        return Err(ApiError::new(
            Reason::NotFound,
            "the server could not find the requested resource",
        ));
    }
    if request.query.get("dryRun").is_some() {
        return Err(ApiError::bad_request("dryRun is not supported by the kube emulator"));
    }
    let namespace = path.namespace.clone().unwrap_or_default();
    if def.namespaced && path.namespace.is_none() && (path.name.is_some() || request.method != Method::GET) {
        return Err(ApiError::method_not_allowed(
            request.method.as_str(),
            &format!("cluster-wide {}", def.plural),
        ));
    }
    let version = path.version.as_str();
    let sub = path.subresource.as_deref();
    match (&request.method, path.name.as_deref(), sub) {
        (&Method::GET, None, None) if request.query.flag("watch") => {
            watch::serve(shared, def, version, path.namespace.as_deref(), &request.query)
        }
        (&Method::GET, None, None) => list(shared, &def, version, path.namespace.as_deref(), &request),
        (&Method::GET, Some(name), None | Some("status")) if sub.is_none() || def.status_subresource => {
            get(shared, &def, version, &namespace, name, &request)
        }
        (&Method::POST, None, None) => create(shared, &def, version, &namespace, &request),
        (&Method::POST, Some(name), Some("token")) if def.behavior == Behavior::ServiceAccount => {
            let body = parse_object(&request.body)?;
            let mut state = shared.state();
            let response = tokens::request_token(
                &mut state,
                &shared.clock,
                &shared.api_audiences,
                &namespace,
                name,
                &body,
            )?;
            Ok(json_response(201, &response))
        }
        (&Method::PUT, Some(name), None | Some("status")) if sub.is_none() || def.status_subresource => {
            let body = parse_object(&request.body)?;
            let validation = field_validation(&request.query)?;
            let mut state = shared.state();
            let status_only = sub.is_some();
            let updated = write::update(
                &mut state,
                &shared.clock,
                &def,
                version,
                &namespace,
                name,
                body,
                status_only,
                validation,
            )?;
            Ok(json_response(200, &present(&def, version, updated)))
        }
        (&Method::PATCH, Some(name), None | Some("status")) if sub.is_none() || def.status_subresource => {
            patch(shared, &def, version, &namespace, name, sub.is_some(), &request)
        }
        (&Method::DELETE, Some(name), None) => {
            let options = if request.body.is_empty() {
                json!({})
            } else {
                parse_object(&request.body)?
            };
            let options = with_query_options(options, &request.query);
            let mut state = shared.state();
            let deleted = delete::delete(&mut state, &shared.clock, &def, &namespace, name, &options)?;
            Ok(json_response(200, &present(&def, version, deleted)))
        }
        (&Method::DELETE, None, None) => delete_collection(shared, &def, version, &namespace, &request),
        (_, _, Some(other)) if !def.subresources().contains(&other) => Err(ApiError::new(
            Reason::NotFound,
            format!(
                "the server could not find the requested resource ({}/{other})",
                def.plural
            ),
        )),
        (method, _, _) => Err(ApiError::method_not_allowed(method.as_str(), &def.plural)),
    }
}

/// Sets `apiVersion` to the version the client asked through (objects are stored once per
/// group resource); `Status` bodies pass through.
pub(super) fn present(def: &ResourceDef, version: &str, mut object: Value) -> Value {
    if object.get("kind").and_then(Value::as_str) != Some("Status")
        && let Some(map) = object.as_object_mut()
    {
        map.insert("apiVersion".to_owned(), json!(def.api_version(version)));
    }
    object
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("the request body must be a JSON object"))
    }
}

fn field_validation(query: &Query) -> Result<FieldValidation, ApiError> {
    match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", got \"{other}\""
        ))),
    }
}

fn with_query_options(mut options: Value, query: &Query) -> Value {
    if let (Some(policy), Some(map)) = (query.get("propagationPolicy"), options.as_object_mut()) {
        map.insert("propagationPolicy".to_owned(), json!(policy));
    }
    options
}

fn get(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    name: &str,
    request: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let state = shared.state();
    let object = state
        .get(&def.group_resource(), if def.namespaced { namespace } else { "" }, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let object = present(def, version, object);
    if table::wants_table(&request.accept) {
        let meta = json!({"resourceVersion": state.current_rv().to_string()});
        let include = request.query.get("includeObject").unwrap_or("Metadata");
        return Ok(json_response(
            200,
            &table::table(def, &[object], meta, include, shared.clock.now_unix()),
        ));
    }
    Ok(json_response(200, &object))
}

/// Parses the label and field selectors of a list or watch.
pub(super) fn selectors(def: &ResourceDef, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").unwrap_or(""),
        &supported_fields(&def.group, &def.plural),
    )?;
    Ok((labels, fields))
}

fn list(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: Option<&str>,
    request: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(def, &request.query)?;
    let limit = match request.query.get("limit") {
        None | Some("") => 0,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit \"{text}\"")))?,
    };
    let start_after = match request.query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => Some(decode_continue(token)?),
    };
    let state = shared.state();
    let matching: Vec<_> = state
        .list(&def.group_resource(), namespace)
        .filter(|(key, _)| start_after.as_ref().is_none_or(|after| *key > after))
        .filter(|(_, object)| labels.matches(object) && fields.matches(object))
        .collect();
    let page = if limit > 0 {
        limit.min(matching.len())
    } else {
        matching.len()
    };
    let items: Vec<Value> = matching[..page]
        .iter()
        .map(|(_, object)| present(def, version, (*object).clone()))
        .collect();
    let mut meta = json!({"resourceVersion": state.current_rv().to_string()});
    if page < matching.len()
        && let Some(((ns, name), _)) = page.checked_sub(1).and_then(|last| matching.get(last))
    {
        meta["remainingItemCount"] = json!(matching.len() - page);
        meta["continue"] = json!(URL_SAFE_NO_PAD.encode(json!([ns, name]).to_string()));
    }
    drop(state);
    if table::wants_table(&request.accept) {
        let include = request.query.get("includeObject").unwrap_or("Metadata");
        return Ok(json_response(
            200,
            &table::table(def, &items, meta, include, shared.clock.now_unix()),
        ));
    }
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(version), "metadata": meta, "items": items}),
    ))
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: \"{token}\""));
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    serde_json::from_slice::<(String, String)>(&bytes).map_err(|_| invalid())
}

fn create(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    request: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let body = parse_object(&request.body)?;
    if def.behavior == Behavior::TokenReview {
        let state = shared.state();
        let review = tokens::review_token(&state, &shared.clock, &shared.api_audiences, &body)?;
        return Ok(json_response(201, &review));
    }
    let validation = field_validation(&request.query)?;
    let mut state = shared.state();
    let created = write::create(&mut state, &shared.clock, def, version, namespace, body, validation)?;
    Ok(json_response(201, &present(def, version, created)))
}

fn patch(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    name: &str,
    status_only: bool,
    request: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let patch_type = PatchType::from_content_type(&request.content_type)?;
    let validation = field_validation(&request.query)?;
    if patch_type == PatchType::Strategic && def.behavior == Behavior::CustomResource {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    if patch_type == PatchType::Apply {
        return apply(shared, def, version, namespace, name, status_only, request, validation);
    }
    let mut state = shared.state();
    let current = state
        .get(&def.group_resource(), if def.namespaced { namespace } else { "" }, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let mut patched = apply_patch(&current, patch_type, &request.body)?;
    write::check_identity(def, version, namespace, Some(name), &mut patched)?;
    let result = write::replace(
        &mut state,
        &shared.clock,
        def,
        version,
        &current,
        patched,
        status_only,
        validation,
    )?;
    Ok(json_response(200, &present(def, version, result)))
}

#[allow(clippy::too_many_arguments)]
fn apply(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    name: &str,
    status_only: bool,
    request: &ApiRequest,
    validation: FieldValidation,
) -> Result<Response<Body>, ApiError> {
    let manager = request
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("PATCH requests with apply content type require the fieldManager parameter")
        })?
        .to_owned();
    let mut applied: Value = match serde_json::from_slice(&request.body) {
        Ok(value) => value,
        Err(_) => serde_norway::from_slice(&request.body)
            .map_err(|e| ApiError::bad_request(format!("the apply configuration is neither JSON nor YAML: {e}")))?,
    };
    for field in ["apiVersion", "kind"] {
        if applied.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "the apply configuration is missing {field}"
            )));
        }
    }
    write::check_identity(def, version, namespace, Some(name), &mut applied)?;
    if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let key = ApplyKey {
        gr: def.group_resource(),
        namespace: if def.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
        manager,
        status: status_only,
    };
    let mut state = shared.state();
    let current = state.get(&key.gr, &key.namespace, name).cloned();
    let Some(current) = current else {
        if status_only {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        }
        let created = write::create(
            &mut state,
            &shared.clock,
            def,
            version,
            namespace,
            applied.clone(),
            validation,
        )?;
        state.applied.insert(key, applied);
        return Ok(json_response(201, &present(def, version, created)));
    };
    let applied = if status_only {
        json!({"status": applied.get("status").cloned().unwrap_or_else(|| json!({}))})
    } else {
        applied
    };
    let mut candidate = current.clone();
    apply_configuration(&mut candidate, &applied, state.applied.get(&key));
    let result = write::replace(
        &mut state,
        &shared.clock,
        def,
        version,
        &current,
        candidate,
        status_only,
        validation,
    )?;
    state.applied.insert(key, applied);
    Ok(json_response(200, &present(def, version, result)))
}

fn delete_collection(
    shared: &Shared,
    def: &ResourceDef,
    version: &str,
    namespace: &str,
    request: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(def, &request.query)?;
    let options = if request.body.is_empty() {
        json!({})
    } else {
        parse_object(&request.body)?
    };
    let options = with_query_options(options, &request.query);
    let mut state = shared.state();
    let names: Vec<(String, String)> = state
        .list(&def.group_resource(), def.namespaced.then_some(namespace))
        .filter(|(_, object)| labels.matches(object) && fields.matches(object))
        .map(|(key, _)| key.clone())
        .collect();
    let mut items = Vec::new();
    for (ns, name) in names {
        // Objects may already be gone through a cascade from an earlier deletion.
        if state.get(&def.group_resource(), &ns, &name).is_none() {
            continue;
        }
        let last = state.get(&def.group_resource(), &ns, &name).cloned();
        let deleted = delete::delete(&mut state, &shared.clock, def, &ns, &name, &options)?;
        let object = if deleted.get("kind").and_then(Value::as_str) == Some("Status") {
            last
        } else {
            Some(deleted)
        };
        items.extend(object.map(|o| present(def, version, o)));
    }
    let rv = state.current_rv();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(version),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

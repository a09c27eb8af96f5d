//! The `/admin/*` handlers (SPEC §11) over the manager and the overlay: providers, routes, stats, metrics, overlay, reload.
//!
//! Wire formats: lists are `{"data": [...]}`; a provider is its config as
//! JSON (secrets shown as `"[redacted]"`) plus a read-only `origin`
//! (`file`, `admin` or `override`), so a `GET` body can be sent back with
//! `PUT` as is (`"[redacted]"` keeps the current secret; `origin` is
//! ignored). Errors use the OpenAI shape: unknown id 404, duplicate id 409,
//! invalid config 400 whose message and `param` name the field
//! (`provider.base_url`, `routes."gpt-4o".split.blue`).
//!
//! Every write takes the config lock ([`ConfigControl::lock`](super::ConfigControl::lock)),
//! so writes and reloads apply one at a time, then calls the manager's own
//! method, which emits the events of SPEC §8 (`provider_added` and
//! `dynamic_provider_added`, `provider_updated`, `provider_removed`,
//! `provider_reset`), and records the change in the overlay.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchyard_core::config::{REDACTED, validate_routes};
use switchyard_core::{
    AddOptions, ConfigError, GatewayConfig, ManagerError, ProviderConfig, RouteConfig,
};

use crate::admin::overlay::Origin;
use crate::admin::policy;
use crate::app::AppState;
use crate::error::ApiError;
use crate::reload::{self, ReloadError, Trigger};
use crate::routes::read_body;
use crate::telemetry;

/// A provider config as admin JSON: secrets and sensitive header values
/// redacted, plus its `origin`.
pub fn provider_json(config: &ProviderConfig, origin: Origin) -> Value {
    let mut value = redacted_provider(config);
    if let Value::Object(map) = &mut value {
        map.insert("origin".to_owned(), json!(origin));
    }
    value
}

/// A provider config as JSON with its inline key and sensitive header values redacted.
pub fn redacted_provider(config: &ProviderConfig) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(Value::Object(headers)) = value.get_mut("headers") {
        for (name, header) in headers.iter_mut() {
            if policy::is_sensitive_header(name) {
                *header = json!(REDACTED);
            }
        }
    }
    value
}

/// The parameters of a query string (percent-decoded).
pub fn query_params(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A query flag: absent is `false`; `true`/`1`/`false`/`0` otherwise.
fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" || v == "1" || v.is_empty() => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::invalid_request(format!(
            "Query parameter `{name}` must be true or false, not '{v}'."
        ))
        .with_param(name)),
    }
}

/// 400 for an invalid config, naming every issue; `param` is the first path.
pub fn config_error(error: &ConfigError, state: &AppState) -> ApiError {
    let mut api = ApiError::invalid_request(
        state
            .redactor
            .redact(&format!("Invalid configuration: {error}")),
    )
    .with_code("invalid_config");
    api.param = error.issues.first().map(|i| i.path.clone());
    api
}

/// The status and body of a manager error on an admin route.
pub fn manager_error(error: &ManagerError, state: &AppState) -> ApiError {
    let message = state.redactor.redact(&error.to_string());
    match error {
        ManagerError::DuplicateProvider { .. } => {
            ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message)
                .with_code("provider_exists")
                .with_param("id")
        }
        ManagerError::UnknownProvider { id } => not_found_provider(id),
        ManagerError::IdMismatch { .. } => ApiError::invalid_request(message).with_param("id"),
        ManagerError::Config(config) => config_error(config, state),
        ManagerError::HealthCheckFailed { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
                .with_code("health_check_failed")
        }
        _ => ApiError::internal(message),
    }
}

fn not_found_provider(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No provider has the id '{id}'."),
    )
    .with_code("provider_not_found")
    .with_param("id")
}

fn not_found_route(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No route is configured for model '{model}'; PUT one to create it."),
    )
    .with_code("route_not_found")
    .with_param("model")
}

/// Parses a JSON body into `T`; errors name the field as `{prefix}.{path}`.
fn parse_config<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut path = error.path().to_string();
        let message = error.into_inner().to_string();
        // A missing field is reported at its parent: name the field itself.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            path = if path == "." || path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
        }
        let path = if path == "." || path.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        ApiError::invalid_request(format!("Invalid configuration: {path}: {message}"))
            .with_code("invalid_config")
            .with_param(&path)
    })
}

fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_request("The body must be a JSON object.")),
        Err(error) => Err(ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {error}"
        ))
        .with_code("invalid_json")),
    }
}

/// A provider config from an admin body; `id` from the path when given.
fn parse_provider(bytes: &[u8], path_id: Option<&str>) -> Result<ProviderConfig, ApiError> {
    let mut map = json_object(bytes)?;
    map.remove("origin");
    if let Some(id) = path_id {
        match map.get("id") {
            None => {
                map.insert("id".to_owned(), json!(id));
            }
            Some(Value::String(given)) if given == id => {}
            Some(given) => {
                return Err(ApiError::invalid_request(format!(
                    "Invalid configuration: provider.id: {given} does not match the id '{id}' in the path"
                ))
                .with_code("invalid_config")
                .with_param("provider.id"));
            }
        }
    }
    parse_config(Value::Object(map), "provider")
}

/// Checks a provider set and routes as a whole (references between them).
fn check_whole(
    state: &AppState,
    providers: Vec<ProviderConfig>,
    routes: BTreeMap<String, RouteConfig>,
) -> Result<(), ApiError> {
    GatewayConfig {
        manager: state.manager.options().clone(),
        providers,
        routes,
    }
    .validate()
    .map_err(|error| config_error(&error, state))
}

fn fail(error: ApiError) -> Response {
    error.into_response()
}

fn register_metrics(state: &AppState, providers: &[ProviderConfig]) {
    if state.manager.options().enable_metrics {
        telemetry::register(providers);
    }
}

/// `GET /admin/providers`.
pub async fn list_providers(State(state): State<AppState>) -> Response {
    let overlay = state.control.overlay();
    let data: Vec<Value> = state
        .manager
        .provider_configs()
        .iter()
        .map(|config| provider_json(config, overlay.origin(&config.id)))
        .collect();
    Json(json!({ "data": data })).into_response()
}

/// `GET /admin/providers/{id}`.
pub async fn get_provider(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.manager.provider_config(&id) {
        Some(config) => Json(provider_json(&config, state.control.origin(&id))).into_response(),
        None => fail(not_found_provider(&id)),
    }
}

/// `POST /admin/providers`: one provider config; `?validate_only=true`
/// checks and builds it and changes nothing; `?health_check=true` runs an
/// active check first and refuses the provider if it fails (502).
pub async fn add_provider(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match add(&state, &query_params(query.as_deref()), body).await {
        Ok(response) => response,
        Err(error) => fail(error),
    }
}

async fn add(
    state: &AppState,
    params: &HashMap<String, String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let options = AddOptions {
        validate_only: flag(params, "validate_only")?,
        health_check: flag(params, "health_check")?,
    };
    let bytes = read_body(body, state.server.max_body_bytes, Default::default())?;
    let mut config = parse_provider(&bytes, None)?;
    let _write = state.control.lock().await;
    if state.manager.provider_config(&config.id).is_some() {
        return Err(manager_error(
            &ManagerError::DuplicateProvider {
                id: config.id.clone(),
            },
            state,
        ));
    }
    config
        .validate()
        .map_err(|error| config_error(&error, state))?;
    state
        .control
        .policy(state)
        .admit(&mut config, None)
        .await
        .map_err(|error| config_error(&error, state))?;
    state
        .redactor
        .add(state.control.secrets_of(std::slice::from_ref(&config)));
    let outcome = state
        .manager
        .add_dynamic_provider(&config.id.clone(), config.clone(), options)
        .await
        .map_err(|error| manager_error(&error, state))?;
    let status = if options.validate_only {
        StatusCode::OK
    } else {
        let file = state.control.file(state);
        let mut overlay = state.control.overlay();
        overlay.add(&file, config.clone());
        state.control.set_overlay(overlay);
        register_metrics(state, std::slice::from_ref(&config));
        tracing::info!(provider = %config.id, "provider added through the admin API");
        StatusCode::CREATED
    };
    let origin = state.control.origin(&config.id);
    let mut body = serde_json::to_value(&outcome).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("provider".to_owned(), provider_json(&config, origin));
    }
    Ok((status, Json(body)).into_response())
}

/// `PUT /admin/providers/{id}`: replaces the provider's config, hot.
pub async fn replace_provider(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match replace(&state, &id, body).await {
        Ok(response) => response,
        Err(error) => fail(error),
    }
}

async fn replace(
    state: &AppState,
    id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.server.max_body_bytes, Default::default())?;
    let mut config = parse_provider(&bytes, Some(id))?;
    let _write = state.control.lock().await;
    let previous = state
        .manager
        .provider_config(id)
        .ok_or_else(|| not_found_provider(id))?;
    state
        .control
        .policy(state)
        .admit(&mut config, Some(&previous))
        .await
        .map_err(|error| config_error(&error, state))?;
    config
        .validate()
        .map_err(|error| config_error(&error, state))?;
    let providers: Vec<ProviderConfig> = state
        .manager
        .provider_configs()
        .into_iter()
        .map(|p| if p.id == id { config.clone() } else { p })
        .collect();
    check_whole(state, providers, state.manager.routes())?;
    state
        .redactor
        .add(state.control.secrets_of(std::slice::from_ref(&config)));
    let state_kept = state
        .manager
        .update_provider_config(id, config.clone())
        .await
        .map_err(|error| manager_error(&error, state))?;
    let file = state.control.file(state);
    let mut overlay = state.control.overlay();
    overlay.replace(&file, config.clone());
    state.control.set_overlay(overlay);
    register_metrics(state, std::slice::from_ref(&config));
    tracing::info!(provider = %id, state_kept, "provider replaced through the admin API");
    Ok(Json(json!({
        "id": id,
        "state_kept": state_kept,
        "provider": provider_json(&config, state.control.origin(id)),
    }))
    .into_response())
}

/// `DELETE /admin/providers/{id}`: removes it; requests in flight finish.
/// Refused (409) while a route names it or needs it for a fallback, and
/// for the last provider.
pub async fn remove_provider(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match remove(&state, &id).await {
        Ok(response) => response,
        Err(error) => fail(error),
    }
}

async fn remove(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let _write = state.control.lock().await;
    if state.manager.provider_config(id).is_none() {
        return Err(not_found_provider(id));
    }
    let remaining: Vec<ProviderConfig> = state
        .manager
        .provider_configs()
        .into_iter()
        .filter(|p| p.id != id)
        .collect();
    let in_use = |message: String| {
        ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message)
            .with_code("provider_in_use")
            .with_param("id")
    };
    if remaining.is_empty() {
        return Err(in_use(format!(
            "Provider '{id}' is the last one; add another before removing it."
        )));
    }
    let mut issues = Vec::new();
    validate_routes(&state.manager.routes(), &remaining, &mut issues);
    if !issues.is_empty() {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        return Err(in_use(format!(
            "Provider '{id}' cannot be removed while routes need it ({}); change those routes first.",
            list.join("; ")
        )));
    }
    state
        .manager
        .remove_provider(id)
        .await
        .map_err(|error| manager_error(&error, state))?;
    let file = state.control.file(state);
    let mut overlay = state.control.overlay();
    overlay.remove(&file, id);
    state.control.set_overlay(overlay);
    tracing::info!(provider = %id, "provider removed through the admin API");
    Ok(Json(json!({ "id": id, "removed": true })).into_response())
}

/// `POST /admin/providers/{id}/reset`: clears failure counters, cooldowns
/// and circuits, then runs one active check (unless `health_check = "none"`).
pub async fn reset_provider(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.manager.reset_provider(&id).await {
        Ok(health) => Json(json!({ "provider_id": id, "health": health })).into_response(),
        Err(error) => fail(manager_error(&error, &state)),
    }
}

/// `GET /admin/stats`: one row per provider, least loaded first.
pub async fn stats(State(state): State<AppState>) -> Response {
    Json(json!({ "data": state.manager.get_provider_load_stats() })).into_response()
}

/// `GET /admin/metrics`: the manager's metrics snapshot.
pub async fn metrics(State(state): State<AppState>) -> Response {
    Json(state.manager.metrics_snapshot()).into_response()
}

/// `GET /admin/routes`: `{"data": [{"model": ..., route fields}]}`.
pub async fn list_routes(State(state): State<AppState>) -> Response {
    let data: Vec<Value> = state
        .manager
        .routes()
        .iter()
        .map(|(model, route)| {
            let mut value = serde_json::to_value(route).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("model".to_owned(), json!(model));
            }
            value
        })
        .collect();
    Json(json!({ "data": data })).into_response()
}

/// `GET /admin/routes/{model}`: the route as configured.
pub async fn get_route(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    match state.manager.route(&model) {
        Some(route) => Json(route).into_response(),
        None => fail(not_found_route(&model)),
    }
}

/// `PUT /admin/routes/{model}`: replaces the route (strategy, fallbacks,
/// blue-green `sets` and `split`...); takes effect for the next request,
/// so a split can be shifted or rolled back at once.
pub async fn put_route(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put(&state, &model, body).await {
        Ok(response) => response,
        Err(error) => fail(error),
    }
}

async fn put(
    state: &AppState,
    model: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.server.max_body_bytes, Default::default())?;
    let map = json_object(&bytes)?;
    let route: RouteConfig = parse_config(Value::Object(map), &format!("routes.\"{model}\""))?;
    let _write = state.control.lock().await;
    state
        .manager
        .set_route(model, Some(route.clone()))
        .await
        .map_err(|error| manager_error(&error, state))?;
    let file = state.control.file(state);
    let mut overlay = state.control.overlay();
    overlay.set_route(&file, model, Some(route.clone()));
    state.control.set_overlay(overlay);
    tracing::info!(%model, "route replaced through the admin API");
    Ok(Json(route).into_response())
}

/// `DELETE /admin/routes/{model}`: removes the route (the model keeps being
/// served with the default strategy and no fallbacks).
pub async fn delete_route(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    let _write = state.control.lock().await;
    if state.manager.route(&model).is_none() {
        return fail(not_found_route(&model));
    }
    let mut routes = state.manager.routes();
    routes.remove(&model);
    if let Err(error) = check_whole(&state, state.manager.provider_configs(), routes) {
        return fail(error);
    }
    if let Err(error) = state.manager.set_route(&model, None).await {
        return fail(manager_error(&error, &state));
    }
    let file = state.control.file(&state);
    let mut overlay = state.control.overlay();
    overlay.set_route(&file, &model, None);
    state.control.set_overlay(overlay);
    tracing::info!(%model, "route removed through the admin API");
    Json(json!({ "model": model, "removed": true })).into_response()
}

/// `GET /admin/overlay`: what the admin API changed on top of the file.
pub async fn overlay(State(state): State<AppState>) -> Response {
    Json(state.control.overlay().summary()).into_response()
}

/// `POST /admin/reload`: reloads the config file now; `?override=true`
/// lets the file win over admin changes it clashes with.
pub async fn reload(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let force = match flag(&query_params(query.as_deref()), "override") {
        Ok(force) => force,
        Err(error) => return fail(error),
    };
    match reload::reload(&state, Trigger::Admin, force).await {
        Ok(report) => Json(report.unwrap_or_default()).into_response(),
        Err(error) => fail(reload_error(&error)),
    }
}

/// `GET /admin/reload`: the outcome of the last reload (`{"last": null}` before any).
pub async fn last_reload(State(state): State<AppState>) -> Response {
    Json(json!({
        "source": state.control.source().to_string(),
        "last": state.control.last_reload(),
    }))
    .into_response()
}

fn reload_error(error: &ReloadError) -> ApiError {
    let message = error.to_string();
    match error {
        ReloadError::NoFile => ApiError::invalid_request(message).with_code("reload_unavailable"),
        ReloadError::Invalid(_) | ReloadError::Rejected(_) => {
            ApiError::invalid_request(message).with_code("invalid_config")
        }
        ReloadError::Conflict(_) => {
            ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message)
                .with_code("reload_conflict")
        }
    }
}

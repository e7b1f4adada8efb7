//! The REST endpoints of the Open Inference Protocol (KServe v2) over axum: health, server and
//! model metadata, model readiness, inference, per-model statistics, model configurations and the
//! repository index (Triton's statistics, model configuration and model repository extensions),
//! and Prometheus `/metrics`. Every refusal is the
//! protocol's `{"error": "..."}` with its status: 400 for bad requests (unknown model, wrong
//! datatype, shape or rank, out-of-range class, NaN input, missing input), 413 for a body past
//! the limit, 429 when the queue is full, 503 while shutting down or not ready, 504 past the
//! request timeout.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::infer;
use super::models;
use super::package::PackageState;
use super::protocol::{self, HEADER_LENGTH, Refusal};
use super::state::AppState;
use super::stats::RequestTimes;
use super::{config, repository};

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], r.body()).into_response()
}

fn json_ok(v: serde_json::Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// The routes of a server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats_version))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_version))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn live() -> Response {
    json_ok(json!({ "live": true }))
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    if s.is_ready() {
        return json_ok(json!({ "ready": true }));
    }
    let failed: Vec<String> = s
        .packages()
        .iter()
        .filter_map(|p| match p.state() {
            PackageState::Failed(why) => Some(why),
            _ => None,
        })
        .collect();
    let message = if failed.is_empty() { "not ready".into() } else { format!("not ready: {}", failed.join("; ")) };
    refusal(Refusal { status: 503, message })
}

async fn server_metadata() -> Response {
    json_ok(json!({
        "name": "itarflow-rt",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]
    }))
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.find(&model) {
        Some((p, k)) => json_ok(json!(models::metadata(p.sampler.model(), &p.name, k))),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_metadata_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_metadata(state, Path(model)).await
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.model_ready(&model) {
        Some(true) => json_ok(json!({ "name": model, "ready": true })),
        Some(false) => refusal(Refusal { status: 503, message: format!("model {model} is not ready") }),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_ready_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_ready(state, Path(model)).await
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut text = s.metrics.render();
    text.push_str(&s.readiness_metrics());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn infer_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Response {
    infer(state, Path(model), headers, body).await
}

async fn infer(State(s): State<Arc<AppState>>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let result = infer_inner(&s, &model, &headers, body).await;
    let (response, times) = match result {
        Ok((r, times)) => (r, Some(times)),
        Err(r) => {
            tracing::info!(model = %model, status = r.status, error = %r.message, "request refused");
            (refusal(r), None)
        }
    };
    s.answered(&model, response.status().as_u16(), start, times);
    response
}

async fn infer_inner(s: &Arc<AppState>, model: &str, headers: &HeaderMap, body: Body) -> Result<(Response, RequestTimes), Refusal> {
    let (package, kind) = infer::admit(s, model)?;
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return Err(Refusal::bad("compressed request bodies are not supported; send them uncompressed"));
    }
    let bytes = axum::body::to_bytes(body, s.max_body_bytes).await.map_err(|_| Refusal {
        status: 413,
        message: format!("the request body is larger than {} bytes (--max-body-mib)", s.max_body_bytes),
    })?;
    let header_length = match headers.get(HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<usize>().ok())
                .ok_or_else(|| Refusal::bad(format!("{HEADER_LENGTH} must be a byte count")))?,
        ),
        None => None,
    };
    let req = protocol::decode(&bytes, header_length)?;
    let (outputs, mut times) = infer::run(s, &package, kind, &req).await?;
    let encoding = Instant::now();
    let encoded = protocol::encode(model, &req, &outputs)?;
    times.output += encoding.elapsed();
    let mut response = Response::new(Body::from(encoded.body));
    let h = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok((response, times))
}

/// Triton's statistics extension: `{"model_stats": [...]}` of every model, or of one.
async fn all_stats(State(s): State<Arc<AppState>>) -> Response {
    json_ok(json!({ "model_stats": s.stats.snapshot(None).unwrap_or_default() }))
}

async fn model_stats(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.stats.snapshot(Some(&model)) {
        Some(stats) => json_ok(json!({ "model_stats": stats })),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_stats_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_stats(state, Path(model)).await
}

/// Triton's model configuration extension: the model's configuration as Triton writes it in JSON.
async fn model_config(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.find(&model) {
        Some((p, k)) => json_ok(json!(config::model_config(&s, &p, k))),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_config_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_config(state, Path(model)).await
}

/// Triton's repository index: the models with their state; `{"ready": true}` lists only those
/// ready (Triton's clients send an empty body for all).
async fn repository_index(State(s): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if v.is_object() && v.get("ready").is_none_or(|r| r.is_boolean()) => v.get("ready").is_some_and(|r| r == true),
            _ => return refusal(Refusal::bad("the repository index takes an empty body or {\"ready\": true|false}")),
        }
    };
    json_ok(json!(repository::index(&s, ready_only)))
}

/// Triton's `load`: the package of the model repository called `model` loaded (again) and warmed
/// up before the answer.
async fn load(State(s): State<Arc<AppState>>, Path(model): Path<String>, body: axum::body::Bytes) -> Response {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let parameters = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(request)) => request.get("parameters").cloned().unwrap_or_default(),
            _ => return refusal(Refusal::bad("a load takes an empty body or a JSON object")),
        };
        let keys = parameters.as_object().map(|p| p.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
        if let Err(r) = repository::no_load_parameters(keys) {
            return refusal(r);
        }
    }
    match repository::load(&s, &model).await {
        Ok(()) => json_ok(json!({})),
        Err(r) => refusal(r),
    }
}

/// Triton's `unload`: the package no longer served (requests in flight finish).
async fn unload(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match repository::unload(&s, &model).await {
        Ok(()) => json_ok(json!({})),
        Err(r) => refusal(r),
    }
}

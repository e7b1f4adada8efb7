//! The REST endpoints of the Open Inference Protocol (KServe v2) over axum: health, server and
//! model metadata, model readiness, inference, and Prometheus `/metrics`. Every refusal is the
//! protocol's `{"error": "..."}` with its status: 400 for bad requests (unknown model, wrong
//! datatype, shape or rank, out-of-range class, NaN input, missing input), 413 for a body past
//! the limit, 429 when the queue is full, 503 while shutting down or not ready, 504 past the
//! request timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ndarray::ArrayView4;
use serde_json::json;

use super::batcher::Batcher;
use super::metrics::Metrics;
use super::models::{self, Kind, RequestLimits};
use super::protocol::{self, HEADER_LENGTH, Output, Refusal};
use crate::Sampler;

/// What the handlers share.
pub struct AppState {
    pub name: String,
    pub sampler: Arc<Sampler>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub limits: RequestLimits,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// Graphs loaded and warmed.
    pub ready: AtomicBool,
    /// SIGTERM/SIGINT received: requests in flight finish, new ones are refused.
    pub shutting_down: AtomicBool,
    /// Seeds of requests that give none.
    pub next_seed: AtomicU64,
}

impl AppState {
    fn kind(&self, model: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.model_name(&self.name) == model)
    }

    fn unknown(&self, model: &str) -> Refusal {
        let known: Vec<String> = Kind::ALL.iter().map(|k| k.model_name(&self.name)).collect();
        Refusal::bad(format!("unknown model '{model}' (this server has {known:?})"))
    }
}

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
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn live() -> Response {
    json_ok(json!({ "live": true }))
}

fn is_ready(s: &AppState) -> bool {
    s.ready.load(Ordering::Acquire) && !s.shutting_down.load(Ordering::Acquire)
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    if is_ready(&s) { json_ok(json!({ "ready": true })) } else { refusal(Refusal { status: 503, message: "not ready".into() }) }
}

async fn server_metadata() -> Response {
    json_ok(json!({ "name": "itarflow-rt", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"] }))
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.kind(&model) {
        Some(k) => json_ok(models::metadata(s.sampler.model(), &s.name, k)),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_metadata_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_metadata(state, Path(model)).await
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.kind(&model) {
        Some(_) if is_ready(&s) => json_ok(json!({ "name": model, "ready": true })),
        Some(_) => refusal(Refusal { status: 503, message: format!("model {model} is not ready") }),
        None => refusal(s.unknown(&model)),
    }
}

async fn model_ready_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>) -> Response {
    model_ready(state, Path(model)).await
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn infer_version(state: State<Arc<AppState>>, Path((model, _)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Response {
    infer(state, Path(model), headers, body).await
}

async fn infer(State(s): State<Arc<AppState>>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let result = infer_inner(&s, &model, &headers, body).await;
    let response = match result {
        Ok(r) => r,
        Err(r) => {
            tracing::info!(model = %model, status = r.status, error = %r.message, "request refused");
            refusal(r)
        }
    };
    // Metrics label only this server's models: names from arbitrary URLs would grow the label set.
    let label = if s.kind(&model).is_some() { model.as_str() } else { "unknown" };
    s.metrics.request(label, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

async fn infer_inner(s: &Arc<AppState>, model: &str, headers: &HeaderMap, body: Body) -> Result<Response, Refusal> {
    if s.shutting_down.load(Ordering::Acquire) {
        return Err(Refusal { status: 503, message: "the server is shutting down".into() });
    }
    if !s.ready.load(Ordering::Acquire) {
        return Err(Refusal { status: 503, message: "the server is not ready yet".into() });
    }
    let kind = s.kind(model).ok_or_else(|| s.unknown(model))?;
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
    let c = &s.sampler.model().manifest.model;
    let image_shape = |b: usize| vec![b, c.in_channels, c.img_size, c.img_size];
    let outputs = match kind {
        Kind::Sample => {
            let seed = s.next_seed.fetch_add(1, Ordering::Relaxed);
            let job = models::sample_job(s.sampler.model(), s.sampler.settings(), &req, s.limits, seed)?;
            let b = job.labels.len();
            let rx = s.batcher.submit(job).map_err(|_| Refusal { status: 429, message: "the queue is full; retry later".into() })?;
            let images = tokio::time::timeout(s.timeout, rx)
                .await
                .map_err(|_| Refusal { status: 504, message: format!("no result within {} s", s.timeout.as_secs_f64()) })?
                .map_err(|_| Refusal { status: 500, message: "the batch was dropped".into() })?
                .map_err(|e| Refusal { status: 500, message: e })?;
            vec![Output { name: "images".into(), shape: image_shape(b), data: images }]
        }
        Kind::Score | Kind::Denoise => {
            let job = models::image_job(s.sampler.model(), &req, s.limits, kind == Kind::Score)?;
            let b = job.labels.len();
            let sampler = s.sampler.clone();
            let run = tokio::task::spawn_blocking(move || -> Result<Vec<Output>, String> {
                let shape = (
                    b,
                    sampler.model().manifest.model.in_channels,
                    sampler.model().manifest.model.img_size,
                    sampler.model().manifest.model.img_size,
                );
                let x = ArrayView4::from_shape(shape, &job.x).map_err(|e| e.to_string())?;
                let dims = vec![shape.0, shape.1, shape.2, shape.3];
                if job.t.is_empty() {
                    let images = sampler.denoise(x, &job.labels, &mut |_| {}).map_err(|e| e.to_string())?;
                    Ok(vec![Output { name: "images".into(), shape: dims, data: images.iter().copied().collect() }])
                } else {
                    let (score, logp) = sampler.score(x, &job.t, &job.labels).map_err(|e| e.to_string())?;
                    Ok(vec![
                        Output { name: "score".into(), shape: dims, data: score.iter().copied().collect() },
                        Output { name: "logp".into(), shape: vec![b], data: logp.to_vec() },
                    ])
                }
            });
            tokio::time::timeout(s.timeout, run)
                .await
                .map_err(|_| Refusal { status: 504, message: format!("no result within {} s", s.timeout.as_secs_f64()) })?
                .map_err(|e| Refusal { status: 500, message: e.to_string() })?
                .map_err(|e| Refusal { status: 500, message: e })?
        }
    };
    let encoded = protocol::encode(model, &req, &outputs)?;
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
    Ok(response)
}

//! `inference.GRPCInferenceService` over tonic: health, server and model metadata, model
//! readiness, inference, and streamed inference (`ModelStreamInfer`: requests on one stream run as
//! they arrive, so that they batch together, and each answer, in the order they finish, carries
//! its request's id), and Triton's statistics, model configuration and repository index extensions
//! (`ModelStatistics`, `ModelConfig`, `RepositoryIndex`), on the same state as the REST endpoints.
//! Loading and unloading models (`RepositoryModelLoad`, `RepositoryModelUnload`) on a server with
//! a model repository; elsewhere they answer FAILED_PRECONDITION. Triton's shared memory and
//! trace methods answer UNIMPLEMENTED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::http;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::messages::*;
use super::routed::{Routed, Routes};
use super::{config, statistics, tensors};
use crate::serve::infer;
use crate::serve::models;
use crate::serve::protocol::Refusal;
use crate::serve::repository;
use crate::serve::state::AppState;

pub(super) const SERVICE: &str = "inference.GRPCInferenceService";

/// The inference service's methods.
pub struct Inference;

/// The inference service on a server's state.
pub type InferenceService = Routed<Inference>;

/// A handler as tonic's unary service: called once per request.
struct Unary<F>(Option<F>);

impl<Req, Resp, F, Fut> UnaryService<Req> for Unary<F>
where
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Resp>, Status>> + Send>>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        match self.0.take() {
            Some(f) => {
                let fut = f(request.into_inner());
                Box::pin(async move { fut.await.map(Response::new) })
            }
            None => Box::pin(async { Err(Status::internal("a handler was called twice")) }),
        }
    }
}

/// Decodes the request message (at most `limit` bytes), runs `handler`, encodes its answer.
pub(super) async fn unary<Req, Resp, F, Fut>(req: http::Request<Body>, limit: usize, handler: F) -> http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let response = Grpc::new(ProstCodec::<Resp, Req>::default()).max_decoding_message_size(limit).unary(Unary(Some(handler)), req).await;
    too_large(response, limit)
}

/// tonic refuses a message past the limit with OUT_OF_RANGE (no handler here answers that code):
/// gRPC's own servers say RESOURCE_EXHAUSTED, and the message should name the setting.
fn too_large(response: http::Response<Body>, limit: usize) -> http::Response<Body> {
    if response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"11") {
        return Status::resource_exhausted(format!("the request message is larger than {limit} bytes (--max-body-mib)")).into_http();
    }
    response
}

/// `ModelStreamInfer`: each request of the inbound stream runs as it arrives; answers go out as
/// they finish, a failed request as its error message (with its id) instead of ending the stream.
/// Once the client closes or cancels the stream, requests still running are dropped.
struct StreamInfer(Arc<AppState>);

impl StreamingService<ModelInferRequest> for StreamInfer {
    type Response = ModelStreamInferResponse;
    type ResponseStream = ReceiverStream<Result<ModelStreamInferResponse, Status>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<ModelInferRequest>>) -> Self::Future {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let s = self.0.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            loop {
                let m = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                let (s, tx) = (s.clone(), tx.clone());
                tokio::spawn(async move {
                    let (model, id) = (m.model_name.clone(), m.id.clone());
                    // A stream its client closed or cancelled takes no more answers: its requests
                    // leave their queues, and their runs stop, as a unary call's would.
                    let result = tokio::select! {
                        r = model_infer(s, m) => r,
                        () = tx.closed() => return,
                    };
                    let answer = match result {
                        Ok(r) => ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) },
                        Err(e) => ModelStreamInferResponse {
                            error_message: e.message().to_string(),
                            infer_response: Some(ModelInferResponse { model_name: model, id, ..Default::default() }),
                        },
                    };
                    let _ = tx.send(Ok(answer)).await;
                });
            }
        });
        std::future::ready(Ok(Response::new(ReceiverStream::new(rx))))
    }
}

/// A request for a model this server does not have: NOT_FOUND over gRPC (REST answers 400).
fn unknown(s: &AppState, model: &str) -> Refusal {
    Refusal { status: 404, message: s.unknown(model).message }
}

fn not_found(s: &AppState, model: &str) -> Status {
    tensors::status(unknown(s, model))
}

impl Routes for Inference {
    const NAME: &'static str = SERVICE;

    async fn route(s: Arc<AppState>, req: http::Request<Body>) -> http::Response<Body> {
        let limit = s.max_body_bytes;
        let path = req.uri().path().to_string();
        let method = path.strip_prefix('/').and_then(|p| p.strip_prefix(SERVICE)).and_then(|p| p.strip_prefix('/'));
        match method {
            Some("ServerLive") => unary(req, limit, |_: Empty| async { Ok(ServerLiveResponse { live: true }) }).await,
            Some("ServerReady") => {
                let ready = s.is_ready();
                unary(req, limit, move |_: Empty| async move { Ok(ServerReadyResponse { ready }) }).await
            }
            Some("ModelReady") => {
                unary(req, limit, |m: ModelRef| {
                    let r = match s.model_ready(&m.name) {
                        Some(ready) => Ok(ModelReadyResponse { ready }),
                        None => Err(not_found(&s, &m.name)),
                    };
                    async move { r }
                })
                .await
            }
            Some("ServerMetadata") => {
                unary(req, limit, |_: Empty| async {
                    let extensions = ["statistics", "model_configuration", "model_repository"].map(String::from).to_vec();
                    Ok(ServerMetadataResponse { name: "itarflow-rt".into(), version: env!("CARGO_PKG_VERSION").into(), extensions })
                })
                .await
            }
            Some("ModelMetadata") => unary(req, limit, |m: ModelRef| std::future::ready(model_metadata(&s, &m.name))).await,
            Some("ModelStatistics") => {
                unary(req, limit, |m: ModelStatisticsRequest| {
                    let r = match s.stats.snapshot((!m.name.is_empty()).then_some(m.name.as_str())) {
                        Some(stats) => Ok(statistics::response(stats)),
                        None => Err(not_found(&s, &m.name)),
                    };
                    async move { r }
                })
                .await
            }
            Some("ModelConfig") => {
                unary(req, limit, |m: ModelConfigRequest| {
                    let r = match s.find(&m.name) {
                        Some((p, k)) => Ok(config::response(crate::serve::config::model_config(&s, &p, k))),
                        None => Err(not_found(&s, &m.name)),
                    };
                    async move { r }
                })
                .await
            }
            Some("RepositoryIndex") => {
                unary(req, limit, |r: RepositoryIndexRequest| {
                    let answer = config::index(repository::index(&s, r.ready));
                    async move { Ok(answer) }
                })
                .await
            }
            Some("RepositoryModelLoad" | "RepositoryModelUnload") if s.repository.is_none() => {
                Status::failed_precondition(repository::NO_MODEL_CONTROL).into_http()
            }
            Some("RepositoryModelLoad") => {
                unary(req, limit, |m: RepositoryModelRequest| async move {
                    repository::no_load_parameters(m.parameters.keys().map(String::as_str)).map_err(tensors::status)?;
                    repository::load(&s, &m.model_name).await.map(|()| Empty {}).map_err(tensors::status)
                })
                .await
            }
            Some("RepositoryModelUnload") => {
                unary(req, limit, |m: RepositoryModelRequest| async move {
                    repository::unload(&s, &m.model_name).await.map(|()| Empty {}).map_err(tensors::status)
                })
                .await
            }
            Some("ModelInfer") => unary(req, limit, |m: ModelInferRequest| model_infer(s.clone(), m)).await,
            Some("ModelStreamInfer") => {
                let response = Grpc::new(ProstCodec::<ModelStreamInferResponse, ModelInferRequest>::default())
                    .max_decoding_message_size(limit)
                    .streaming(StreamInfer(s.clone()), req)
                    .await;
                too_large(response, limit)
            }
            _ => Status::unimplemented(format!(
                "{path} is not served here: itarflow-rt answers {SERVICE}'s ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics, RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload, ModelInfer and ModelStreamInfer"
            ))
            .into_http(),
        }
    }
}

fn model_metadata(s: &AppState, model: &str) -> Result<ModelMetadataResponse, Status> {
    let (p, kind) = s.find(model).ok_or_else(|| not_found(s, model))?;
    let m = models::metadata(p.sampler.model(), &p.name, kind);
    let tensors = |list: Vec<models::TensorMeta>| {
        list.into_iter().map(|t| TensorMetadata { name: t.name.into(), datatype: t.datatype.name().into(), shape: t.shape }).collect()
    };
    Ok(ModelMetadataResponse {
        name: m.name,
        versions: m.versions.into_iter().map(String::from).collect(),
        platform: m.platform.into(),
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    })
}

async fn model_infer(s: Arc<AppState>, m: ModelInferRequest) -> Result<ModelInferResponse, Status> {
    let start = Instant::now();
    let model = m.model_name.clone();
    let result = async {
        // An unknown model is gRPC's NOT_FOUND (REST answers it 400): looked up again only then.
        let (package, kind) = infer::admit(&s, &model).map_err(|r| if s.kind(&model).is_none() { unknown(&s, &model) } else { r })?;
        let req = tensors::decode(m)?;
        let (outputs, mut times) = infer::run(&s, &package, kind, &req).await?;
        let encoding = Instant::now();
        let response = tensors::encode(&model, &req, &outputs)?;
        times.output += encoding.elapsed();
        Ok::<_, Refusal>((response, times))
    }
    .await;
    // The metrics count a refusal under the HTTP status REST gives it (404: an unknown model).
    let (code, times) = match &result {
        Ok((_, times)) => (200, Some(*times)),
        Err(r) => {
            tracing::info!(model = %model, status = r.status, error = %r.message, "gRPC request refused");
            (r.status, None)
        }
    };
    s.answered(&model, code, start, times);
    result.map(|(response, _)| response).map_err(tensors::status)
}

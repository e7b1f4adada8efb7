//! `itarflow-rt serve`: the sampler behind the Open Inference Protocol (KServe v2, REST and
//! gRPC, as Triton speaks them), so that KServe, Triton's clients and any HTTP client can use it. One
//! package is served as three models: `{name}` (sampling, with dynamic batching), `{name}-score`
//! and `{name}-denoise`. Behind the `serve` feature: embedders of the library do not get tokio or
//! axum.
//!
//! - [`protocol`]: the protocol's REST messages, JSON tensors and the binary tensor data extension;
//! - [`models`]: the three models' metadata and their requests checked into work;
//! - [`state`]: what the endpoints share;
//! - [`infer`]: a request run, whichever protocol brought it;
//! - [`batcher`]: concurrent sampling requests merged into sampler runs;
//! - [`metrics`]: Prometheus counters and histograms;
//! - [`stats`]: per-model statistics (Triton's statistics extension);
//! - [`config`]: each model's configuration (Triton's model configuration extension);
//! - [`repository`]: the repository index (Triton's model repository extension);
//! - [`http`]: the REST endpoints;
//! - [`grpc`]: the gRPC service.

pub mod batcher;
pub mod config;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod models;
pub mod protocol;
pub mod repository;
pub mod state;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{RtError, Sampler};
use batcher::{BatchOptions, Batcher, Observers};
use metrics::Metrics;
use models::{Kind, RequestLimits};
use state::AppState;
use stats::Statistics;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The sampling model's name (the others add `-score` and `-denoise`).
    pub name: String,
    /// The REST endpoints' address.
    pub addr: SocketAddr,
    /// The gRPC service's address, if it is served.
    pub grpc_addr: Option<SocketAddr>,
    pub batch: BatchOptions,
    pub limits: RequestLimits,
    pub max_body_bytes: usize,
    /// A request without its result after this long gets 504.
    pub timeout: Duration,
    /// After SIGTERM/SIGINT, how long new requests get 503 (and readiness fails) before the
    /// listener closes; requests in flight finish either way.
    pub shutdown_grace: Duration,
}

/// The addresses a server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), RtError> {
    let io = |source| RtError::Io { path: addr.to_string().into(), source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    Ok((listener, bound))
}

/// Serves `sampler` until `shutdown` resolves; `on_listening` gets the bound addresses (port 0
/// binds an ephemeral one).
pub async fn serve(
    sampler: Arc<Sampler>,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(Listening),
) -> Result<(), RtError> {
    let metrics = Arc::new(Metrics::default());
    let names: Vec<String> = Kind::ALL.iter().map(|k| k.model_name(&opts.name)).collect();
    let stats = Arc::new(Statistics::new(&names));
    let observers = Observers { metrics: metrics.clone(), stats: stats.clone() };
    let batcher = Batcher::start(sampler.clone(), opts.batch, observers, opts.name.clone());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let state = Arc::new(AppState {
        name: opts.name.clone(),
        sampler: sampler.clone(),
        batcher,
        batch: opts.batch,
        metrics,
        stats,
        limits: opts.limits,
        max_body_bytes: opts.max_body_bytes,
        timeout: opts.timeout,
        ready: AtomicBool::new(false),
        warm_up_failed: OnceLock::new(),
        shutting_down: AtomicBool::new(false),
        next_seed: AtomicU64::new(seed),
    });
    let (listener, addr) = bind(opts.addr).await?;
    let grpc = match opts.grpc_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    on_listening(Listening { http: addr, grpc: grpc.as_ref().map(|g| g.1) });
    // Live at once; ready once every graph sampling needs is loaded and one image sampled.
    let warm = state.clone();
    tokio::spawn(async move {
        let s = warm.sampler.clone();
        let result = tokio::task::spawn_blocking(move || {
            s.warm_up()?;
            let z = itarflow_base::prior_noise(0, s.model().noise_len());
            s.sample_from(&z, &s.labels()[..1.min(s.labels().len())], &mut |_| {}).map(|_| ())
        })
        .await;
        let failed = match result {
            Ok(Ok(())) => {
                warm.ready.store(true, Ordering::Release);
                tracing::info!("ready");
                return;
            }
            Ok(Err(e)) => format!("warming up failed: {e}"),
            Err(e) => format!("warming up panicked: {e}"),
        };
        tracing::error!(error = %failed, "the server stays not ready");
        let _ = warm.warm_up_failed.set(failed);
    });
    let closing = state.clone();
    let grace = opts.shutdown_grace;
    // Both listeners close together, after the grace period.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        closing.shutting_down.store(true, Ordering::Release);
        tracing::info!(grace_s = grace.as_secs_f64(), "shutting down: new requests get 503, requests in flight finish");
        tokio::time::sleep(grace).await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let router = http::router(state.clone());
    let rest_stop = stopped(stop_rx.clone());
    let rest = async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(rest_stop)
            .await
            .map_err(|source| RtError::Io { path: addr.to_string().into(), source })
    };
    match grpc {
        Some((listener, grpc_addr)) => {
            let grpc = tonic::transport::Server::builder()
                .add_service(grpc::InferenceService::new(state.clone()))
                .add_service(grpc::HealthService::new(state))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stopped(stop_rx));
            let grpc =
                async { grpc.await.map_err(|e| RtError::Io { path: grpc_addr.to_string().into(), source: std::io::Error::other(e) }) };
            tokio::try_join!(rest, grpc)?;
        }
        None => rest.await?,
    }
    tracing::info!("stopped");
    Ok(())
}

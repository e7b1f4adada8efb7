//! `itarflow-rt serve`: the sampler behind the Open Inference Protocol (KServe v2, REST and
//! gRPC, as Triton speaks them), so that KServe, Triton's clients and any HTTP client can use it. A
//! package is served as three models: `{name}` (sampling, with dynamic batching), `{name}-score`
//! and `{name}-denoise`; a server serves one package, or every package of a model repository,
//! loaded and unloaded while it runs ([`Served`]). Behind the `serve` feature: embedders of the
//! library do not get tokio or axum.
//!
//! - [`protocol`]: the protocol's REST messages, JSON tensors and the binary tensor data extension;
//! - [`models`]: the three models' metadata and their requests checked into work;
//! - [`package`]: a package served: its models, sampler, batcher and readiness;
//! - [`state`]: what the endpoints share;
//! - [`infer`]: a request run, whichever protocol brought it;
//! - [`batcher`]: concurrent sampling requests merged into sampler runs;
//! - [`metrics`]: Prometheus counters and histograms;
//! - [`stats`]: per-model statistics (Triton's statistics extension);
//! - [`config`]: each model's configuration (Triton's model configuration extension);
//! - [`repository`]: the model repository: its index, loading and unloading packages (Triton's
//!   model repository extension);
//! - [`http`]: the REST endpoints;
//! - [`grpc`]: the gRPC service.

pub mod batcher;
pub mod config;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod models;
pub mod package;
pub mod protocol;
pub mod repository;
pub mod state;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{RtError, Sampler};
use batcher::BatchOptions;
use models::RequestLimits;
use package::Package;
use state::{AppState, OpenPackage, Repository};

/// What a server serves.
pub enum Served {
    /// One package for the server's life, its sampling model called `name` (the others add
    /// `-score` and `-denoise`).
    Package { name: String, sampler: Arc<Sampler> },
    /// Every package of the model repository `dir` (see [`repository`]), each opened by `open`;
    /// packages are loaded and unloaded by name while the server runs.
    Repository { dir: PathBuf, open: OpenPackage },
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The REST endpoints' address.
    pub addr: SocketAddr,
    /// The gRPC service's address, if it is served.
    pub grpc_addr: Option<SocketAddr>,
    pub batch: BatchOptions,
    /// Each package's runs padded where its sampler's loops run as captured CUDA graphs (CUDA,
    /// TensorRT), in place of `batch.pad`.
    pub pad_auto: bool,
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

/// Serves `served` until `shutdown` resolves; `on_listening` gets the bound addresses (port 0
/// binds an ephemeral one). A repository's packages are opened before the listeners bind (one
/// that cannot be opened stops the server, naming it).
pub async fn serve(
    served: Served,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(Listening),
) -> Result<(), RtError> {
    let (repository, initial) = match served {
        Served::Package { name, sampler } => (None, vec![(name, sampler)]),
        Served::Repository { dir, open } => {
            let mut initial = Vec::new();
            for (name, package) in repository::scan(&dir)? {
                let sampler = open(&package).map_err(|e| RtError::Setting(format!("loading {name} from {}: {e}", package.display())))?;
                initial.push((name, Arc::new(sampler)));
            }
            (Some(Repository { dir, open, changing: tokio::sync::Mutex::new(()) }), initial)
        }
    };
    let state = Arc::new(AppState::new(repository, opts.limits, (opts.batch, opts.pad_auto), opts.max_body_bytes, opts.timeout));
    let packages: Vec<Arc<Package>> =
        initial.into_iter().map(|(name, sampler)| Package::start(name, sampler, opts.batch, opts.pad_auto, state.observers())).collect();
    for p in &packages {
        state.insert(p.clone());
    }
    let (listener, addr) = bind(opts.addr).await?;
    let grpc = match opts.grpc_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    on_listening(Listening { http: addr, grpc: grpc.as_ref().map(|g| g.1) });
    // Live at once; ready once every package's graphs sampling needs are loaded and one image
    // sampled.
    for p in packages {
        tokio::spawn(async move {
            let name = p.name.clone();
            match tokio::task::spawn_blocking(move || p.warm_up()).await {
                Ok(Ok(())) => tracing::info!(package = %name, "ready"),
                Ok(Err(why)) => tracing::error!(error = %why, "the server stays not ready"),
                Err(e) => tracing::error!(package = %name, error = %e, "warming up panicked; the server stays not ready"),
            }
        });
    }
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

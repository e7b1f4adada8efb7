//! What a server's endpoints share, whichever protocol they speak: the sampler, the batcher,
//! the metrics and statistics, the limits, and whether the server is ready or shutting down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::batcher::{BatchOptions, Batcher};
use super::metrics::Metrics;
use super::models::{Kind, RequestLimits};
use super::protocol::Refusal;
use super::stats::{RequestTimes, Statistics};
use crate::Sampler;

pub struct AppState {
    pub name: String,
    pub sampler: Arc<Sampler>,
    pub batcher: Batcher,
    /// How the batcher merges requests (what the model configuration reports).
    pub batch: BatchOptions,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Statistics>,
    pub limits: RequestLimits,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// Graphs loaded and warmed.
    pub ready: AtomicBool,
    /// Why warming up failed (the server then stays not ready).
    pub warm_up_failed: OnceLock<String>,
    /// SIGTERM/SIGINT received: requests in flight finish, new ones are refused.
    pub shutting_down: AtomicBool,
    /// Seeds of requests that give none.
    pub next_seed: AtomicU64,
}

impl AppState {
    /// The model called `model` on this server.
    pub fn kind(&self, model: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.model_name(&self.name) == model)
    }

    /// The refusal of a request for a model this server does not have.
    pub fn unknown(&self, model: &str) -> Refusal {
        let known: Vec<String> = Kind::ALL.iter().map(|k| k.model_name(&self.name)).collect();
        Refusal::bad(format!("unknown model '{model}' (this server has {known:?})"))
    }

    /// Ready for requests: warmed up and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    /// An inference request to `model` answered with HTTP status `code` (REST's, or the one REST
    /// would give a gRPC refusal) after starting at `start`, its times where it succeeded: into
    /// the metrics and the statistics, with one duration.
    pub fn answered(&self, model: &str, code: u16, start: Instant, times: Option<RequestTimes>) {
        let took = start.elapsed();
        self.metrics.request(self.metrics_label(model), code, took.as_secs_f64());
        self.stats.request(model, took, times);
    }

    /// The label of `model` in the metrics: only this server's models (names from arbitrary
    /// requests would grow the label set).
    fn metrics_label<'a>(&self, model: &'a str) -> &'a str {
        if self.kind(model).is_some() { model } else { "unknown" }
    }
}

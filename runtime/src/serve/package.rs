//! A package a server serves: its three models (`{name}`, `{name}-score`, `{name}-denoise`), the
//! sampler that runs them, the batcher in front of its sampling model, and whether it is warmed
//! up. A server holds one package (`--model`), or those of a model repository (`--model-repository`),
//! which can be loaded and unloaded while it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::batcher::{BatchOptions, Batcher, Observers};
use super::models::Kind;
use crate::Sampler;

pub struct Package {
    /// The sampling model's name; the others add `-score` and `-denoise`.
    pub name: String,
    pub sampler: Arc<Sampler>,
    pub batcher: Batcher,
    /// Graphs loaded and one image sampled.
    ready: AtomicBool,
    /// Why warming up failed (the package then stays not ready).
    warm_up_failed: OnceLock<String>,
}

/// A package's state, as the repository index says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageState {
    Ready,
    /// Warming up.
    Loading,
    /// Warming up failed: why.
    Failed(String),
}

impl Package {
    /// The package `name` on `sampler`, its batcher started on the current tokio runtime; not
    /// ready until [`Self::warm_up`] succeeds. With `pad_auto`, runs are padded where the
    /// sampler's loops run as captured CUDA graphs (one per batch size), whatever `batch.pad` says.
    pub fn start(name: String, sampler: Arc<Sampler>, mut batch: BatchOptions, pad_auto: bool, observers: Observers) -> Arc<Self> {
        if pad_auto {
            batch.pad = sampler.resident() && sampler.provider().device_resident();
        }
        tracing::info!(package = %name, provider = %sampler.provider(), max_batch = batch.max_batch, pad_batches = batch.pad, "batching");
        let batcher = Batcher::start(sampler.clone(), batch, observers, name.clone());
        Arc::new(Self { name, sampler, batcher, ready: AtomicBool::new(false), warm_up_failed: OnceLock::new() })
    }

    /// Its three models' names.
    pub fn model_names(&self) -> Vec<String> {
        Kind::ALL.iter().map(|k| k.model_name(&self.name)).collect()
    }

    /// Which of its models `model` is.
    pub fn kind(&self, model: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.model_name(&self.name) == model)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn state(&self) -> PackageState {
        match (self.is_ready(), self.warm_up_failed.get()) {
            (true, _) => PackageState::Ready,
            (false, Some(why)) => PackageState::Failed(why.clone()),
            (false, None) => PackageState::Loading,
        }
    }

    /// Loads every graph sampling needs and samples one image (blocking: call it off the async
    /// runtime's threads); ready after, or failed with the reason (also returned).
    pub fn warm_up(&self) -> Result<(), String> {
        let s = &self.sampler;
        let result = s.warm_up().and_then(|()| {
            let z = itarflow_base::prior_noise(0, s.model().noise_len());
            s.sample_from(&z, &s.labels()[..1.min(s.labels().len())], &mut |_| {}).map(|_| ())
        });
        match result {
            Ok(()) => {
                self.ready.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let why = format!("warming up {} failed: {e}", self.name);
                let _ = self.warm_up_failed.set(why.clone());
                Err(why)
            }
        }
    }
}

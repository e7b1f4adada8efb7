//! A package a server serves: its three models (`{name}`, `{name}-score`, `{name}-denoise`), the
//! sampler that runs them, the batcher in front of its sampling model, and whether it is warmed
//! up. A server holds one package (`--model`), or those of a model repository (`--model-repository`),
//! which can be loaded and unloaded while it runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::batcher::{BatchOptions, Batcher, Observers};
use super::models::Kind;
use crate::Sampler;

pub struct Package {
    /// The sampling model's name; the others add `-score` and `-denoise`.
    pub name: String,
    pub sampler: Arc<Sampler>,
    pub batcher: Batcher,
    /// Score and denoising runs: permits to run, and the requests waiting for one.
    image_runs: Arc<Semaphore>,
    image_waiting: AtomicUsize,
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
        Arc::new(Self {
            name,
            sampler,
            batcher,
            image_runs: Arc::new(Semaphore::new(batch.max_image_runs.max(1))),
            image_waiting: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            warm_up_failed: OnceLock::new(),
        })
    }

    /// A permit to run a score or denoising request, once one is free (in arrival order); None
    /// when `max_queue` requests wait already. A request that stops waiting (its timeout) leaves
    /// the queue without running.
    pub async fn image_run(&self, max_queue: usize) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.image_runs.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.image_waiting.fetch_add(1, Ordering::AcqRel) >= max_queue {
            self.image_waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Counted out however the wait ends (a permit, or the caller's timeout dropping it).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.image_waiting);
        self.image_runs.clone().acquire_owned().await.ok()
    }

    /// Its three models' names.
    pub fn model_names(&self) -> Vec<String> {
        Kind::ALL.iter().map(|k| k.model_name(&self.name)).collect()
    }

    /// Which of its models `model` is.
    pub fn kind(&self, model: &str) -> Option<Kind> {
        let suffix = model.strip_prefix(self.name.as_str())?;
        Kind::ALL.into_iter().find(|&k| crate::model::SERVED_MODEL_SUFFIXES[k as usize] == suffix)
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

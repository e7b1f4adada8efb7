//! What a server's endpoints share, whichever protocol they speak: the packages served (and the
//! model repository they are loaded from, if any), the metrics and statistics, the limits, and
//! whether the server is shutting down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::batcher::{BatchOptions, Observers};
use super::metrics::Metrics;
use super::models::{Kind, RequestLimits};
use super::package::Package;
use super::protocol::Refusal;
use super::stats::{RequestTimes, Statistics};
use crate::{RtError, Sampler};

/// Opens a package's sampler with the server's provider, precision and settings.
pub type OpenPackage = Box<dyn Fn(&Path) -> Result<Sampler, RtError> + Send + Sync>;

/// A model repository: a folder of packages (one sub-folder each, named as its models are),
/// loaded and unloaded by name while the server runs (Triton's model repository extension).
pub struct Repository {
    pub dir: PathBuf,
    pub open: OpenPackage,
    /// Loads and unloads happen one at a time.
    pub changing: tokio::sync::Mutex<()>,
}

pub struct AppState {
    packages: RwLock<Vec<Arc<Package>>>,
    /// Where packages are loaded from, if the server has a repository.
    pub repository: Option<Repository>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Statistics>,
    pub limits: RequestLimits,
    /// How the batchers of packages loaded later merge requests.
    pub batch: BatchOptions,
    /// Padding decided per package ([`Package::start`]).
    pub pad_auto: bool,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// SIGTERM/SIGINT received: requests in flight finish, new ones are refused.
    pub shutting_down: AtomicBool,
    /// Seeds of requests that give none.
    pub next_seed: AtomicU64,
}

impl AppState {
    /// A server's state without packages yet ([`Self::insert`] adds them).
    pub fn new(
        repository: Option<Repository>,
        limits: RequestLimits,
        (batch, pad_auto): (BatchOptions, bool),
        max_body_bytes: usize,
        timeout: Duration,
    ) -> Self {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self {
            packages: RwLock::new(Vec::new()),
            repository,
            metrics: Arc::new(Metrics::default()),
            stats: Arc::new(Statistics::new(&[])),
            limits,
            batch,
            pad_auto,
            max_body_bytes,
            timeout,
            shutting_down: AtomicBool::new(false),
            next_seed: AtomicU64::new(seed),
        }
    }

    /// What a package's batcher reports to.
    pub fn observers(&self) -> Observers {
        Observers { metrics: self.metrics.clone(), stats: self.stats.clone() }
    }

    /// The packages served, in the order they were loaded.
    pub fn packages(&self) -> Vec<Arc<Package>> {
        self.with_packages(|p| p.to_vec())
    }

    /// `f` of the packages served, under the lock (no copy of the list: every request looks its
    /// model up).
    fn with_packages<T: Default>(&self, f: impl FnOnce(&[Arc<Package>]) -> T) -> T {
        self.packages.read().map(|p| f(&p)).unwrap_or_default()
    }

    /// Serves `package` (in place of a package of the same name), its models' statistics from zero.
    pub fn insert(&self, package: Arc<Package>) {
        let names = package.model_names();
        if let Ok(mut packages) = self.packages.write() {
            packages.retain(|p| p.name != package.name);
            packages.push(package);
        }
        self.stats.reset(&names);
    }

    /// Stops serving the package `name` (requests in flight finish); its models' statistics go.
    pub fn remove(&self, name: &str) -> Option<Arc<Package>> {
        let removed = self.packages.write().ok().and_then(|mut packages| {
            let i = packages.iter().position(|p| p.name == name)?;
            Some(packages.remove(i))
        })?;
        self.stats.remove(&removed.model_names());
        Some(removed)
    }

    /// The package and model called `model` on this server.
    pub fn find(&self, model: &str) -> Option<(Arc<Package>, Kind)> {
        self.with_packages(|ps| ps.iter().find_map(|p| p.kind(model).map(|k| (p.clone(), k))))
    }

    /// The model called `model` on this server.
    pub fn kind(&self, model: &str) -> Option<Kind> {
        self.find(model).map(|(_, k)| k)
    }

    /// Every model's name.
    pub fn model_names(&self) -> Vec<String> {
        self.with_packages(|ps| ps.iter().flat_map(|p| p.model_names()).collect())
    }

    /// The refusal of a request for a model this server does not have.
    pub fn unknown(&self, model: &str) -> Refusal {
        Refusal::bad(format!("unknown model '{model}' (this server has {:?})", self.model_names()))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Ready for requests: every package warmed up, and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down() && self.with_packages(|ps| ps.iter().all(|p| p.is_ready()))
    }

    /// Whether the model `model` takes requests (its package warmed up, the server not shutting
    /// down); None for a model this server does not have.
    pub fn model_ready(&self, model: &str) -> Option<bool> {
        self.find(model).map(|(p, _)| p.is_ready() && !self.is_shutting_down())
    }

    /// `itarflow_model_ready` (Prometheus text): 1 for each model served and ready, 0 while its
    /// package warms up or after warming up failed; unloaded models are not listed.
    pub fn readiness_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP itarflow_model_ready Whether a model served takes requests (1) or warms up or failed to (0).\n# TYPE itarflow_model_ready gauge\n",
        );
        for p in self.packages() {
            let ready = u8::from(p.is_ready());
            for m in p.model_names() {
                out.push_str(&format!("itarflow_model_ready{{model=\"{m}\"}} {ready}\n"));
            }
        }
        out
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

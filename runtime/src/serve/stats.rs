//! Per-model inference statistics in the form of Triton's statistics extension (REST
//! `GET /v2/models[/{name}]/stats`, gRPC `ModelStatistics`; what Triton's clients'
//! `get_inference_statistics` and its tools read): requests that succeeded and failed with their
//! cumulative time, the time requests waited for a run (the batcher's queue, or the blocking pool),
//! the time to prepare their inputs, to run the model and to gather their outputs, and the model's
//! runs (executions) by batch size. Durations are counts with cumulative nanoseconds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A count of events and their cumulative duration.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

impl StatDuration {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }
}

/// Triton's `InferStatistics` (the response cache's fields stay zero: there is none).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct InferStats {
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
    pub cache_hit: StatDuration,
    pub cache_miss: StatDuration,
}

/// Triton's `InferBatchStatistics`: the model's runs of one batch size.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    pub batch_size: u64,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// Triton's `ModelStatistics` of one model.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last successful request (0: none yet).
    pub last_inference: u64,
    /// Images of the successful requests.
    pub inference_count: u64,
    /// Model runs (a run serves every request merged into it).
    pub execution_count: u64,
    pub inference_stats: InferStats,
    pub batch_stats: Vec<BatchStats>,
}

#[derive(Default)]
struct Entry {
    last_inference: u64,
    inference_count: u64,
    execution_count: u64,
    stats: InferStats,
    batches: BTreeMap<u64, BatchStats>,
}

/// What a request spent where, recorded when it is answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestTimes {
    pub queue: Duration,
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
    /// Images the request asked for.
    pub images: usize,
}

/// The statistics of a server's models.
pub struct Statistics {
    models: Mutex<BTreeMap<String, Entry>>,
}

impl Statistics {
    /// Statistics of `models`, all zero.
    pub fn new(models: &[String]) -> Self {
        Self { models: Mutex::new(models.iter().map(|m| (m.clone(), Entry::default())).collect()) }
    }

    /// `models` counted from zero (a package loaded, or loaded again).
    pub fn reset(&self, models: &[String]) {
        if let Ok(mut m) = self.models.lock() {
            for name in models {
                m.insert(name.clone(), Entry::default());
            }
        }
    }

    /// `models` no longer counted (a package unloaded).
    pub fn remove(&self, models: &[String]) {
        if let Ok(mut m) = self.models.lock() {
            for name in models {
                m.remove(name);
            }
        }
    }

    fn with(&self, model: &str, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut models) = self.models.lock()
            && let Some(e) = models.get_mut(model)
        {
            f(e);
        }
    }

    /// A request to `model` answered after `total`: its times when it succeeded, or a failure.
    /// Requests for models the server does not have are not recorded.
    pub fn request(&self, model: &str, total: Duration, ok: Option<RequestTimes>) {
        self.with(model, |e| match ok {
            Some(t) => {
                e.stats.success.add(total);
                e.stats.queue.add(t.queue);
                e.stats.compute_input.add(t.input);
                e.stats.compute_infer.add(t.infer);
                e.stats.compute_output.add(t.output);
                e.inference_count += t.images as u64;
                e.last_inference = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            }
            None => e.stats.fail.add(total),
        });
    }

    /// A run of `model` on `batch` images (padding included) that took `infer`.
    pub fn execution(&self, model: &str, batch: usize, infer: Duration) {
        self.with(model, |e| {
            e.execution_count += 1;
            let b = e.batches.entry(batch as u64).or_insert_with(|| BatchStats { batch_size: batch as u64, ..Default::default() });
            b.compute_infer.add(infer);
        });
    }

    /// The statistics of `model`, or of every model; None for a model the server does not have.
    pub fn snapshot(&self, model: Option<&str>) -> Option<Vec<ModelStats>> {
        let models = self.models.lock().ok()?;
        let view = |(name, e): (&String, &Entry)| ModelStats {
            name: name.clone(),
            version: "1".into(),
            last_inference: e.last_inference,
            inference_count: e.inference_count,
            execution_count: e.execution_count,
            inference_stats: e.stats.clone(),
            batch_stats: e.batches.values().cloned().collect(),
        };
        match model {
            Some(m) => models.get_key_value(m).map(|kv| vec![view(kv)]),
            None => Some(models.iter().map(view).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_runs_add_up_per_model() {
        let s = Statistics::new(&["a".into(), "b".into()]);
        let ms = Duration::from_millis;
        let t = RequestTimes { queue: ms(2), input: ms(1), infer: ms(10), output: ms(1), images: 3 };
        s.request("a", ms(15), Some(t));
        s.request("a", ms(16), Some(RequestTimes { images: 1, ..t }));
        s.request("a", ms(1), None);
        s.request("nope", ms(1), None);
        s.execution("a", 4, ms(10));
        s.execution("a", 4, ms(12));
        s.execution("a", 1, ms(5));
        let a = &s.snapshot(Some("a")).unwrap()[0];
        assert_eq!((a.inference_count, a.execution_count), (4, 3));
        assert_eq!(a.inference_stats.success, StatDuration { count: 2, ns: 31_000_000 });
        assert_eq!(a.inference_stats.fail, StatDuration { count: 1, ns: 1_000_000 });
        assert_eq!(a.inference_stats.queue, StatDuration { count: 2, ns: 4_000_000 });
        assert_eq!(a.inference_stats.compute_infer, StatDuration { count: 2, ns: 20_000_000 });
        let sizes: Vec<(u64, StatDuration)> = a.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer)).collect();
        assert_eq!(sizes, [(1, StatDuration { count: 1, ns: 5_000_000 }), (4, StatDuration { count: 2, ns: 22_000_000 })]);
        assert!(a.last_inference > 1_700_000_000_000, "milliseconds since the epoch: {}", a.last_inference);
        let all = s.snapshot(None).unwrap();
        assert_eq!(all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(all[1], ModelStats { name: "b".into(), version: "1".into(), ..Default::default() });
        assert!(s.snapshot(Some("nope")).is_none());
        // A package loaded again counts from zero; one unloaded is no longer reported.
        s.reset(&["a".into()]);
        assert_eq!(s.snapshot(Some("a")).unwrap()[0], ModelStats { name: "a".into(), version: "1".into(), ..Default::default() });
        s.remove(&["b".into()]);
        assert!(s.snapshot(Some("b")).is_none());
        assert_eq!(s.snapshot(None).unwrap().len(), 1);
    }
}

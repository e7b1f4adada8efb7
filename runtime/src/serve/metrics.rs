//! The server's Prometheus metrics, in the text exposition format at `/metrics`: requests and
//! errors by model and status code, request latency and batch size histograms, queue depth,
//! images generated, and requests dropped from the queue unrun (their client stopped waiting).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::RtError;

const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(buckets) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct State {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch: BTreeMap<String, Histogram>,
    queue: BTreeMap<String, i64>,
    images: BTreeMap<String, u64>,
    abandoned: BTreeMap<String, u64>,
    cancelled: BTreeMap<String, u64>,
}

/// The metrics of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// A finished request: its model, status code and latency.
    pub fn request(&self, model: &str, code: u16, seconds: f64) {
        self.with(|s| {
            *s.requests.entry((model.to_string(), code)).or_default() += 1;
            s.latency.entry(model.to_string()).or_default().observe(&LATENCY_BUCKETS, seconds);
        });
    }

    /// A sampler run of `images` images merged from the queue.
    pub fn batch(&self, model: &str, images: usize) {
        self.with(|s| {
            s.batch.entry(model.to_string()).or_default().observe(&BATCH_BUCKETS, images as f64);
            *s.images.entry(model.to_string()).or_default() += images as u64;
        });
    }

    /// Requests waiting for a batch (+1 queued, -1 taken).
    pub fn queue(&self, model: &str, delta: i64) {
        self.with(|s| *s.queue.entry(model.to_string()).or_default() += delta);
    }

    /// `n` queued requests dropped unrun: their client stopped waiting (the request's timeout, or
    /// a closed connection) before their run began.
    pub fn abandoned(&self, model: &str, n: usize) {
        self.with(|s| *s.abandoned.entry(model.to_string()).or_default() += n as u64);
    }

    /// A run's result as its requests are answered (the error as text), a run stopped before it
    /// finished (every request waiting for it went away) counted.
    pub fn run_result<T>(&self, model: &str, result: Result<T, RtError>) -> Result<T, String> {
        if matches!(result, Err(RtError::Cancelled)) {
            self.with(|s| *s.cancelled.entry(model.to_string()).or_default() += 1);
        }
        result.map_err(|e| e.to_string())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(s) = self.state.lock() else { return out };
        out.push_str(
            "# HELP itarflow_requests_total Inference requests by model and HTTP status code.\n# TYPE itarflow_requests_total counter\n",
        );
        for ((m, c), n) in &s.requests {
            let _ = writeln!(out, "itarflow_requests_total{{model=\"{m}\",code=\"{c}\"}} {n}");
        }
        out.push_str(
            "# HELP itarflow_request_duration_seconds Inference request latency.\n# TYPE itarflow_request_duration_seconds histogram\n",
        );
        for (m, h) in &s.latency {
            h.render(&mut out, "itarflow_request_duration_seconds", &format!("model=\"{m}\""), &LATENCY_BUCKETS);
        }
        out.push_str("# HELP itarflow_batch_images Images per sampler run (requests merged).\n# TYPE itarflow_batch_images histogram\n");
        for (m, h) in &s.batch {
            h.render(&mut out, "itarflow_batch_images", &format!("model=\"{m}\""), &BATCH_BUCKETS);
        }
        out.push_str("# HELP itarflow_queue_depth Requests waiting for a sampler run.\n# TYPE itarflow_queue_depth gauge\n");
        for (m, n) in &s.queue {
            let _ = writeln!(out, "itarflow_queue_depth{{model=\"{m}\"}} {n}");
        }
        out.push_str("# HELP itarflow_images_generated_total Images sampled.\n# TYPE itarflow_images_generated_total counter\n");
        for (m, n) in &s.images {
            let _ = writeln!(out, "itarflow_images_generated_total{{model=\"{m}\"}} {n}");
        }
        out.push_str(
            "# HELP itarflow_requests_abandoned_total Queued requests dropped unrun: their client stopped waiting (timeout, closed connection).\n# TYPE itarflow_requests_abandoned_total counter\n",
        );
        for (m, n) in &s.abandoned {
            let _ = writeln!(out, "itarflow_requests_abandoned_total{{model=\"{m}\"}} {n}");
        }
        out.push_str(
            "# HELP itarflow_runs_cancelled_total Runs stopped at their next step: every request waiting for them went away (timeout, closed connection, cancelled call).\n# TYPE itarflow_runs_cancelled_total counter\n",
        );
        for (m, n) in &s.cancelled {
            let _ = writeln!(out, "itarflow_runs_cancelled_total{{model=\"{m}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_as_prometheus_text() {
        let m = Metrics::default();
        m.request("demo", 200, 0.02);
        m.request("demo", 200, 0.3);
        m.request("demo", 400, 0.001);
        m.batch("demo", 6);
        m.queue("demo", 1);
        m.abandoned("demo", 2);
        assert_eq!(m.run_result::<()>("demo-denoise", Err(RtError::Cancelled)), Err(RtError::Cancelled.to_string()));
        assert_eq!(m.run_result("demo-denoise", Ok(3)), Ok(3));
        let text = m.render();
        assert!(text.contains("itarflow_requests_total{model=\"demo\",code=\"200\"} 2"), "{text}");
        assert!(text.contains("itarflow_request_duration_seconds_bucket{model=\"demo\",le=\"0.025\"} 2"), "{text}");
        assert!(text.contains("itarflow_request_duration_seconds_count{model=\"demo\"} 3"), "{text}");
        assert!(text.contains("itarflow_batch_images_bucket{model=\"demo\",le=\"8\"} 1"), "{text}");
        assert!(text.contains("itarflow_images_generated_total{model=\"demo\"} 6"), "{text}");
        assert!(text.contains("itarflow_queue_depth{model=\"demo\"} 1"), "{text}");
        assert!(text.contains("itarflow_requests_abandoned_total{model=\"demo\"} 2"), "{text}");
        assert!(text.contains("itarflow_runs_cancelled_total{model=\"demo-denoise\"} 1"), "{text}");
    }
}

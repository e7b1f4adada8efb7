//! Dynamic batching of sampling requests: requests that arrive within `max_delay` of the first
//! waiting one, with the same settings, are merged into one sampler run of at most `max_batch`
//! images (a request larger than that runs alone). Each request keeps its own prior noise, so
//! merging never changes which images it gets; requests with other settings wait for the next
//! run. The queue is bounded: a full queue refuses new requests at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::models::SampleJob;
use super::stats::Statistics;
use crate::{Cancel, Sampler};

/// How requests are merged.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Images per sampler run, at most.
    pub max_batch: usize,
    /// How long the first waiting request waits for others.
    pub max_delay: Duration,
    /// Requests waiting, at most (for the batcher, and for score and denoising runs each).
    pub max_queue: usize,
    /// Score and denoising requests of a package that run at once, at most (the others wait in
    /// arrival order).
    pub max_image_runs: usize,
    /// Pad each run to a power of two images ([`Self::run_size`]): a sampler whose loops run as captured
    /// CUDA graphs captures one per batch size, so merged batches of every size would each cost
    /// a capture (and ONNX Runtime holds every captured graph).
    pub pad: bool,
}

impl BatchOptions {
    /// The images a run of `n` is made of: `n`, or with `pad` the next power of two, at most
    /// `max_batch` (a request larger than that runs as it is).
    pub fn run_size(&self, n: usize) -> usize {
        if !self.pad || n >= self.max_batch { n } else { n.next_power_of_two().min(self.max_batch) }
    }
}

/// Pads a run of images to `rows`: rows of zeros (`per_row` values each) with the first image's
/// label, dropped from the reply. Each image's computation is its own, so the padding changes no
/// other image.
pub fn pad_run(values: &mut Vec<f32>, labels: &mut Vec<i64>, per_row: usize, rows: usize) {
    values.resize(rows * per_row, 0.0);
    labels.resize(rows, labels[0]);
}

/// A request's images (B, C, H, W) with how long it waited for its run and how long the run
/// took.
#[derive(Debug)]
pub struct Ran {
    pub images: Vec<f32>,
    pub queued: Duration,
    pub infer: Duration,
}

/// A request's run, or why the run failed.
pub type Reply = Result<Ran, String>;

struct Pending {
    job: SampleJob,
    reply: oneshot::Sender<Reply>,
    since: Instant,
}

/// The queue in front of the sampler.
pub struct Batcher {
    /// How its runs are made (denoising requests, run outside the queue, are padded alike).
    pub opts: BatchOptions,
    tx: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
    model: String,
}

/// What a batcher reports to.
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Statistics>,
}

/// The queue held `max_queue` requests already.
#[derive(Debug)]
pub struct QueueFull;

impl Batcher {
    /// Starts the batching task of `model` on the current tokio runtime.
    pub fn start(sampler: Arc<Sampler>, opts: BatchOptions, observers: Observers, model: String) -> Self {
        let (tx, rx) = mpsc::channel(opts.max_queue.max(1));
        let metrics = observers.metrics.clone();
        tokio::spawn(run(sampler, opts, rx, observers, model.clone()));
        Self { opts, tx, metrics, model }
    }

    /// Queues `job`; the receiver gets its images once its run is done.
    pub fn submit(&self, job: SampleJob) -> Result<oneshot::Receiver<Reply>, QueueFull> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Pending { job, reply, since: Instant::now() }).map_err(|_| QueueFull)?;
        self.metrics.queue(&self.model, 1);
        Ok(rx)
    }
}

async fn run(sampler: Arc<Sampler>, opts: BatchOptions, mut rx: mpsc::Receiver<Pending>, observers: Observers, model: String) {
    let Observers { metrics, stats } = observers;
    let mut held: VecDeque<Pending> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let settings = first.job.settings;
        let mut images = first.job.labels.len();
        let mut batch = vec![first];
        // Held requests with the same settings join first, in arrival order.
        let mut rest = VecDeque::new();
        for p in held.drain(..) {
            if p.job.settings == settings && images + p.job.labels.len() <= opts.max_batch {
                images += p.job.labels.len();
                batch.push(p);
            } else {
                rest.push_back(p);
            }
        }
        held = rest;
        let deadline = tokio::time::Instant::now() + opts.max_delay;
        while images < opts.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) if p.job.settings == settings && images + p.job.labels.len() <= opts.max_batch => {
                    images += p.job.labels.len();
                    batch.push(p);
                }
                Ok(Some(p)) => held.push_back(p),
                Ok(None) | Err(_) => break,
            }
        }
        metrics.queue(&model, -(batch.len() as i64));
        // Requests whose client stopped waiting (their timeout or gRPC deadline passed in the
        // queue, the REST connection closed, the gRPC call was cancelled) are not run: under
        // overload, a queue of timed-out requests would otherwise keep the sampler on work
        // nobody reads.
        let waiting = batch.len();
        batch.retain(|p| !p.reply.is_closed());
        if batch.len() < waiting {
            metrics.abandoned(&model, waiting - batch.len());
        }
        if batch.is_empty() {
            continue;
        }
        let images: usize = batch.iter().map(|p| p.job.labels.len()).sum();
        metrics.batch(&model, images);
        let (mut z, mut labels): (Vec<f32>, Vec<i64>) = (
            batch.iter().flat_map(|p| p.job.z.iter().copied()).collect(),
            batch.iter().flat_map(|p| p.job.labels.iter().copied()).collect(),
        );
        let rows = opts.run_size(images);
        pad_run(&mut z, &mut labels, sampler.model().noise_len(), rows);
        let (s, cancel) = (sampler.clone(), Cancel::new());
        let stop = cancel.clone();
        let started = Instant::now();
        let mut run = tokio::task::spawn_blocking(move || s.sample_cancellable(&z, &labels, &settings, &stop, &mut |_| {}));
        // A run whose every request went away (timeouts, closed connections, cancelled calls)
        // stops at its next step: the sampler moves on to requests someone waits for.
        let joined = tokio::select! {
            r = &mut run => r,
            () = all_closed(&mut batch) => {
                cancel.cancel();
                run.await
            }
        };
        let result = joined.map_err(|e| format!("the sampler's thread failed: {e}")).and_then(|r| metrics.run_result(&model, r));
        let infer = started.elapsed();
        if result.is_ok() {
            stats.execution(&model, rows, infer);
        }
        let per = sampler.model().image_len();
        let mut start = 0;
        for p in batch {
            let n = p.job.labels.len() * per;
            let reply = match &result {
                Ok(samples) => Ok(Ran {
                    images: samples.images.as_slice().map(|v| v[start..start + n].to_vec()).unwrap_or_default(),
                    queued: started.duration_since(p.since),
                    infer,
                }),
                Err(e) => Err(e.clone()),
            };
            start += n;
            // A client that went away does not stop the others' replies.
            let _ = p.reply.send(reply);
        }
    }
}

/// Once every request of `batch` is closed (its receiver dropped).
async fn all_closed(batch: &mut [Pending]) {
    for p in batch {
        p.reply.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::BatchOptions;
    use std::time::Duration;

    #[test]
    fn runs_are_padded_to_powers_of_two_up_to_the_batch_limit() {
        let opts = |max_batch, pad| BatchOptions { max_batch, max_delay: Duration::ZERO, max_queue: 1, max_image_runs: 1, pad };
        let padded: Vec<usize> = [1, 2, 3, 5, 8, 9, 33, 48, 64, 65, 200].iter().map(|&n| opts(64, true).run_size(n)).collect();
        assert_eq!(padded, [1, 2, 4, 8, 8, 16, 64, 64, 64, 65, 200]);
        assert_eq!(opts(48, true).run_size(40), 48);
        assert_eq!(opts(64, false).run_size(3), 3);
    }
}

//! An inference request run, whichever protocol brought it: refused while the server is not
//! ready or shutting down, checked against the model's inputs, sampling requests queued for the
//! batcher, score and denoising requests run on the blocking pool, each within the timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ndarray::ArrayView4;

use super::batcher::pad_run;
use super::models::{self, Kind};
use super::package::{Package, PackageState};
use super::protocol::{Output, Refusal, Request};
use super::state::AppState;
use super::stats::RequestTimes;
use crate::Cancel;

/// The package and model a request for `model` goes to, if they take requests now (checked
/// before the request's body is read).
pub fn admit(s: &AppState, model: &str) -> Result<(Arc<Package>, Kind), Refusal> {
    if s.is_shutting_down() {
        return Err(Refusal { status: 503, message: "the server is shutting down".into() });
    }
    let (p, kind) = s.find(model).ok_or_else(|| s.unknown(model))?;
    match p.state() {
        PackageState::Ready => Ok((p, kind)),
        PackageState::Loading => Err(Refusal { status: 503, message: format!("model {model} is not ready yet") }),
        PackageState::Failed(why) => Err(Refusal { status: 503, message: format!("model {model} is not ready: {why}") }),
    }
}

/// The outputs of `req` to the model `kind` of `p` (from [`admit`]) with where its time went, or
/// why not (with the HTTP status the REST endpoint answers). Score and denoising runs are
/// recorded as the model's executions here; sampling runs by the batcher.
pub async fn run(s: &Arc<AppState>, p: &Package, kind: Kind, req: &Request) -> Result<(Vec<Output>, RequestTimes), Refusal> {
    let c = &p.sampler.model().manifest.model;
    let image_shape = |b: usize| vec![b, c.in_channels, c.img_size, c.img_size];
    // The request's own timeout shortens the server's, never extends it.
    let timeout = req.timeout.map_or(s.timeout, |t| t.min(s.timeout));
    let late = || Refusal { status: 504, message: format!("no result within {} s", timeout.as_secs_f64()) };
    let begun = Instant::now();
    Ok(match kind {
        Kind::Sample => {
            let seed = s.next_seed.fetch_add(1, Ordering::Relaxed);
            let job = models::sample_job(p.sampler.model(), p.sampler.settings(), req, s.limits, seed)?;
            let b = job.labels.len();
            let input = begun.elapsed();
            let rx = p.batcher.submit(job).map_err(|_| Refusal { status: 429, message: "the queue is full; retry later".into() })?;
            let ran = tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| late())?
                .map_err(|_| Refusal { status: 500, message: "the batch was dropped".into() })?
                .map_err(|e| Refusal { status: 500, message: e })?;
            let gathered = Instant::now();
            let out = vec![Output { name: "images".into(), shape: image_shape(b), data: ran.images }];
            let times = RequestTimes { queue: ran.queued, input, infer: ran.infer, output: gathered.elapsed(), images: b };
            (out, times)
        }
        Kind::Score | Kind::Denoise => {
            let mut job = models::image_job(p.sampler.model(), req, s.limits, kind == Kind::Score)?;
            let dims = image_shape(job.labels.len());
            let sampler = p.sampler.clone();
            let (images, rows) = (dims[0], p.batcher.opts.run_size(dims[0]));
            let input = begun.elapsed();
            let queued_at = Instant::now();
            let deadline = tokio::time::Instant::from_std(begun + timeout);
            // One run at a time per permit (`--max-image-runs`), the others waiting in arrival
            // order; a request whose timeout passes while it waits leaves without running.
            let full = || Refusal { status: 429, message: "the queue is full; retry later".into() };
            let permit =
                tokio::time::timeout_at(deadline, p.image_run(p.batcher.opts.max_queue)).await.map_err(|_| late())?.ok_or_else(full)?;
            // The run stops at its next denoising step once this request stops waiting (its
            // timeout, a closed connection or cancelled call drops this future).
            let cancel = Cancel::new();
            let _stop_when_gone = CancelOnDrop(cancel.clone());
            let (metrics, model) = (s.metrics.clone(), kind.model_name(&p.name));
            let run = tokio::task::spawn_blocking(move || -> Result<(Vec<Output>, [Duration; 3]), String> {
                let _permit = permit;
                let started = Instant::now();
                let queue = started.duration_since(queued_at);
                if job.t.is_empty() {
                    // Denoising runs as a loop on a device-resident sampler: padded as sampling
                    // runs are.
                    pad_run(&mut job.x, &mut job.labels, dims[1] * dims[2] * dims[3], rows);
                    let x = ArrayView4::from_shape((rows, dims[1], dims[2], dims[3]), &job.x).map_err(|e| e.to_string())?;
                    let images = metrics
                        .run_result(&model, sampler.denoise_cancellable(x, &job.labels, sampler.settings(), &cancel, &mut |_| {}))?;
                    let infer = started.elapsed();
                    let data = images.iter().take(dims.iter().product()).copied().collect();
                    let out = vec![Output { name: "images".into(), shape: dims, data }];
                    Ok((out, [queue, infer, started.elapsed() - infer]))
                } else {
                    let x = ArrayView4::from_shape((dims[0], dims[1], dims[2], dims[3]), &job.x).map_err(|e| e.to_string())?;
                    let (score, logp) = sampler.score(x, &job.t, &job.labels).map_err(|e| e.to_string())?;
                    let infer = started.elapsed();
                    let b = dims[0];
                    let out = vec![
                        Output { name: "score".into(), shape: dims, data: score.iter().copied().collect() },
                        Output { name: "logp".into(), shape: vec![b], data: logp.to_vec() },
                    ];
                    Ok((out, [queue, infer, started.elapsed() - infer]))
                }
            });
            let (out, [queue, infer, output]) = tokio::time::timeout_at(deadline, run)
                .await
                .map_err(|_| late())?
                .map_err(|e| Refusal { status: 500, message: e.to_string() })?
                .map_err(|e| Refusal { status: 500, message: e })?;
            // Denoising runs padded as sampling runs are; scores run as they come.
            let batch = if kind == Kind::Denoise { rows } else { images };
            s.stats.execution(&kind.model_name(&p.name), batch, infer);
            (out, RequestTimes { queue, input, infer, output, images })
        }
    })
}

/// Cancels its flag when dropped: a request's future dropped before its run finished (its
/// timeout, a closed connection) stops the run.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

//! `bench`: the speed of a package on one provider: phase-1 step latency, phase-2 score latency,
//! images/s end to end, and the process's peak resident memory.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::graphs::GraphSet;
use crate::memory::peak_rss_bytes;
use crate::model::Model;
use crate::provider::{Engine, HostTensor, Precision, Provider, ProviderOptions};
use crate::sampler::{ScoreForm, StepCache};
use crate::{RtError, Sampler, with_graphs};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Images per run (phase-1 rows double on guided layers).
    pub batch: usize,
    /// Timed repetitions of the step and the score (the median is reported).
    pub repeats: usize,
    pub score_form: ScoreForm,
    pub step_cache: Option<StepCache>,
}

/// Measured figures of one provider.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub provider: String,
    pub precision: String,
    pub batch: usize,
    pub cfg: f64,
    pub denoise_steps: usize,
    pub step_cache: String,
    pub score_form: String,
    pub load_seconds: f64,
    /// Median latency of one KV-cached step of the first inverted layer, `batch` rows, half
    /// its tokens cached.
    pub step_ms: f64,
    /// Median latency of one score evaluation of `batch` images.
    pub score_ms: f64,
    /// Sampling `batch` images, both phases, graphs already loaded.
    pub sample_seconds: f64,
    pub images_per_second: f64,
    /// Peak resident memory of the whole process (Linux VmHWM).
    pub peak_rss_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_step<E: Engine>(gs: &GraphSet<E>, cache: StepCache, rows: usize, repeats: usize) -> Result<f64, RtError> {
    let m = &gs.model().manifest;
    let l = m.layers.len() - 1;
    let info = &m.layers[l];
    let g = &gs.get(cache.graph_kind())?[l];
    let pos = info.tokens / 2;
    let len = cache.past_len(info.tokens, pos);
    let past = HostTensor::F32(vec![rows, info.heads, len, info.head_dim], vec![0.1; rows * info.heads * len * info.head_dim]);
    let mut feeds = vec![
        g.upload(&HostTensor::F32(vec![rows, info.token_dim], vec![0.5; rows * info.token_dim]))?,
        g.upload(&HostTensor::I64(vec![], vec![pos as i64]))?,
        g.upload(&HostTensor::F32(vec![rows, info.width], vec![0.1; rows * info.width]))?,
        g.upload(&HostTensor::F32(vec![rows], vec![1.0; rows]))?,
    ];
    for _ in 0..2 * info.blocks {
        feeds.push(g.upload(&past)?);
    }
    g.run_values(feeds.iter().collect())?;
    let times = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            g.run_values(feeds.iter().collect()).map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(times))
}

/// Measures `model` on `provider`.
pub fn bench(
    model: Arc<Model>,
    provider: Provider,
    precision: Precision,
    opts: &ProviderOptions,
    b: &BenchOptions,
) -> Result<BenchResult, RtError> {
    let start = Instant::now();
    let mut builder = Sampler::builder(model.clone())
        .provider(provider)
        .provider_options(opts.clone())
        .precision(precision)
        .num_images(b.batch)
        .score_batch(b.batch)
        .score_form(b.score_form);
    if let Some(c) = b.step_cache {
        builder = builder.step_cache(c);
    }
    let sampler = builder.build()?;
    sampler.warm_up()?;
    let load_seconds = start.elapsed().as_secs_f64();
    // One untimed run first (allocator and thread pools warm up).
    sampler.sample(&mut |_| {})?;
    let start = Instant::now();
    sampler.sample(&mut |_| {})?;
    let sample_seconds = start.elapsed().as_secs_f64();
    let s = sampler.settings();
    let rows = if s.guidance.scale > 0.0 { 2 * b.batch } else { b.batch };
    let images = ndarray::Array4::<f32>::zeros((b.batch, model.manifest.model.in_channels, model.manifest.model.img_size, model.manifest.model.img_size));
    let t = vec![s.t_min as f32; b.batch];
    let y = sampler.labels().to_vec();
    let step_ms = with_graphs!(sampler.loaded(), g => time_step(g, sampler.step_cache(), rows, b.repeats))?;
    let score_times = (0..b.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            sampler.score(images.view(), &t, &y).map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BenchResult {
        provider: sampler.provider().name().into(),
        precision: precision.name().into(),
        batch: b.batch,
        cfg: s.guidance.scale,
        denoise_steps: s.denoise_steps,
        step_cache: format!("{:?}", sampler.step_cache()).to_lowercase(),
        score_form: format!("{:?}", b.score_form).to_lowercase(),
        load_seconds,
        step_ms,
        score_ms: median(score_times),
        sample_seconds,
        images_per_second: b.batch as f64 / sample_seconds,
        peak_rss_mib: peak_rss_bytes().map(|v| v as f64 / (1024.0 * 1024.0)),
    })
}

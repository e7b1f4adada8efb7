//! `bench`: the speed of a package on one provider with stated sampler settings: phase-1 step
//! latency, score latency, both phases' seconds and images/s end to end, the process's peak
//! resident memory and, on a GPU, the device memory it holds.

use std::sync::Arc;
use std::time::Instant;

use itarflow_base::manifest::GraphKind;
use serde::Serialize;

use crate::graphs::GraphSet;
use crate::memory::peak_rss_bytes;
use crate::model::Model;
use crate::provider::{Engine, HostTensor, LoopInit, Precision, Provider, ProviderOptions};
use crate::sampler::{CfgStyle, Inversion, SampleSettings, ScoreForm, StepCache};
use crate::{Progress, RtError, Sampler, with_graphs};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Images per run (phase-1 rows double on guided layers).
    pub batch: usize,
    /// Timed repetitions of the step, the score and the sampling run (medians are reported).
    pub repeats: usize,
    pub score_form: ScoreForm,
    pub step_cache: Option<StepCache>,
    /// Sampler settings (default: the package's).
    pub settings: Option<SampleSettings>,
    /// Both phases as loops of the fused graphs (default: the sampler's choice).
    pub resident: Option<bool>,
}

/// Measured figures of one provider.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub provider: String,
    pub precision: String,
    pub tf32: bool,
    /// tract on the CPU with fp16 graphs: whether they computed in fp32 ("fp32") or in fp16
    /// ("native"; see `--tract-f16`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tract_f16: Option<String>,
    /// tract on the CPU: its kernels ([`crate::provider::tract::cpu_kernels`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kernels: Option<String>,
    /// CPU threads the providers were given (`--threads`, 0 resolved to the cores).
    pub threads: usize,
    pub batch: usize,
    pub cfg: f64,
    pub cfg_style: String,
    pub guide_layers: usize,
    pub t_max: f64,
    pub t_min: f64,
    pub denoise_steps: usize,
    /// "loop" (fused graphs, on the device on a GPU) or the step graphs' cache.
    pub phase1: String,
    /// "loop" (denoising-step graph) or the score form.
    pub phase2: String,
    /// How the loops ran (device buffers, CUDA graphs or why not), on a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loop_mode: Option<String>,
    pub load_seconds: f64,
    /// Median latency of one phase-1 step of the first inverted layer (the deepest), its rows
    /// (twice the images when guided): a whole loop over its tokens divided by the steps, or one
    /// step-graph run with half the tokens cached.
    pub step_ms: f64,
    /// Median latency of one score evaluation (score graph) of `batch` images.
    pub score_ms: f64,
    /// Median of the sampling runs: both phases, graphs loaded and warm.
    pub sample_seconds: f64,
    pub phase1_seconds: f64,
    /// Milliseconds of each phase-1 layer, in inversion order (the first from the start of the
    /// run: with the noise and conditioning), in the median sampling run; empty where phase 1
    /// ran in parallel batches.
    pub phase1_layers_ms: Vec<f64>,
    pub phase2_seconds: f64,
    pub images_per_second: f64,
    /// Peak resident memory of the whole process (Linux VmHWM).
    pub peak_rss_mib: Option<f64>,
    /// GPU memory the process holds at the end (ONNX Runtime's arena keeps its peak), from
    /// nvidia-smi.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One step-graph run of the deepest layer, `rows` rows, half its tokens cached.
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

/// The deepest layer's whole inversion loop (`images` images, guided with `style` or not)
/// divided by its steps.
fn time_loop_step<E: Engine>(gs: &GraphSet<E>, images: usize, guided: Option<CfgStyle>, repeats: usize) -> Result<f64, RtError> {
    let model = gs.model();
    let l = model.manifest.layers.len() - 1;
    let info = &model.manifest.layers[l];
    let kind = guided.map_or(GraphKind::Invert, |style| crate::sampler::guided_loop_kind(model, style));
    let g = &gs.get(kind)?[l];
    let entry = gs.entry(kind, Some(l))?;
    let (tokens, steps) = (info.tokens, info.tokens - 1);
    let cond = vec![0.1; images * info.width];
    let host = match guided {
        None => vec![HostTensor::F32(vec![images, info.width], cond)],
        Some(style) => {
            let inputs =
                crate::sampler::GuidedInputs { images, cond: &cond, cond_u: &cond, inv_temp_u: 1.0, weights: vec![2.0; tokens], style };
            inputs.host(entry, info.width)
        }
    };
    let fixed = host.iter().map(|t| g.upload(t)).collect::<Result<Vec<_>, _>>()?;
    let state = || -> Result<Vec<LoopInit<E::Value>>, RtError> {
        let mut s = vec![
            LoopInit::Host(HostTensor::F32(vec![images, tokens, info.token_dim], vec![0.3; images * tokens * info.token_dim])),
            LoopInit::Host(HostTensor::I64(vec![], vec![0])),
        ];
        s.extend(crate::sampler::empty_caches(entry, images));
        Ok(s)
    };
    let fixed: Vec<&E::Value> = fixed.iter().collect();
    g.run_loop(&fixed, state()?, steps, 1)?;
    let times = (0..repeats.max(1))
        .map(|_| {
            let s = state()?;
            let start = Instant::now();
            g.run_loop(&fixed, s, steps, 1).map(|_| start.elapsed().as_secs_f64() * 1e3 / steps as f64)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(times))
}

/// GPU memory this process holds, from nvidia-smi (None where it cannot tell).
fn gpu_memory_mib() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(','))
        .find(|(pid, _)| pid.trim() == me)
        .and_then(|(_, mib)| mib.trim().parse().ok())
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
    if let Some(s) = b.settings {
        builder = builder.settings(s);
    }
    if let Some(c) = b.step_cache {
        builder = builder.step_cache(c);
    }
    if let Some(r) = b.resident {
        builder = builder.resident(r);
    }
    let sampler = builder.build()?;
    sampler.warm_up()?;
    let load_seconds = start.elapsed().as_secs_f64();
    // One untimed run first (allocators, thread pools and captured graphs warm up).
    sampler.sample(&mut |_| {})?;
    let mut runs = Vec::new();
    for _ in 0..b.repeats.clamp(1, 3) {
        let start = Instant::now();
        let mut phase1_end = start;
        let (mut layers, mut batched) = (vec![start], false);
        sampler.sample(&mut |p| {
            if let Progress::Invert { batches, .. } = p {
                phase1_end = Instant::now();
                layers.push(phase1_end);
                batched |= batches > 1;
            }
        })?;
        let total = start.elapsed().as_secs_f64();
        let per_layer = if batched { Vec::new() } else { layers.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect() };
        runs.push((total, (phase1_end - start).as_secs_f64(), per_layer));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (sample_seconds, phase1_seconds, phase1_layers_ms) = runs.swap_remove(runs.len() / 2);
    let s = *sampler.settings();
    let guided = s.guidance.scale > 0.0 && model.num_classes() > 0 && s.guidance.layers > 0;
    let rows = if guided { 2 * b.batch } else { b.batch };
    let images = ndarray::Array4::<f32>::zeros((
        b.batch,
        model.manifest.model.in_channels,
        model.manifest.model.img_size,
        model.manifest.model.img_size,
    ));
    let t = vec![s.t_min as f32; b.batch];
    let y = sampler.labels().to_vec();
    let (step_ms, loop_mode) = match sampler.inversion() {
        Inversion::Steps(cache) => (with_graphs!(sampler.loaded(), g => time_step(g, cache, rows, b.repeats))?, None),
        Inversion::Loop => with_graphs!(sampler.loaded(), g => {
            let style = guided.then_some(s.guidance.style);
            let ms = time_loop_step(g, b.batch, style, b.repeats)?;
            let kind = style.map_or(GraphKind::Invert, |style| crate::sampler::guided_loop_kind(&model, style));
            let invert = g.get(kind)?.last().and_then(|x| x.loop_mode());
            let denoise = if sampler.denoising() == crate::sampler::Denoising::Loop { g.denoise_step()?.loop_mode() } else { None };
            let mode = match (invert, denoise) {
                (Some(i), Some(d)) => Some(format!("phase 1: {i}; phase 2: {d}")),
                (Some(i), None) => Some(format!("phase 1: {i}")),
                _ => None,
            };
            Ok::<_, RtError>((ms, mode))
        })?,
    };
    // The score graph is not part of a loop run's sampling: one untimed run loads and warms it.
    sampler.score(images.view(), &t, &y)?;
    let score_times = (0..b.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            sampler.score(images.view(), &t, &y).map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BenchResult {
        provider: sampler.provider().name().into(),
        precision: precision.name().into(),
        tf32: opts.tf32 && sampler.provider() == Provider::Cuda,
        tract_f16: (sampler.provider() == Provider::Tract && precision != Precision::Fp32).then(|| opts.tract_f16.name().into()),
        cpu_kernels: (sampler.provider() == Provider::Tract).then(crate::provider::tract::cpu_kernels),
        threads: opts.threads(),
        batch: b.batch,
        cfg: s.guidance.scale,
        cfg_style: match s.guidance.style {
            CfgStyle::Tarflow => "tarflow".into(),
            CfgStyle::Starflow => "starflow".into(),
        },
        guide_layers: s.guidance.layers,
        t_max: s.t_max,
        t_min: s.t_min,
        denoise_steps: s.denoise_steps,
        phase1: match sampler.inversion() {
            Inversion::Loop => "loop".into(),
            Inversion::Steps(c) => format!("{c:?} cache").to_lowercase(),
        },
        phase2: match sampler.denoising() {
            crate::sampler::Denoising::Loop => "loop".into(),
            crate::sampler::Denoising::Scores(f) => format!("{f:?} score").to_lowercase(),
        },
        loop_mode,
        load_seconds,
        step_ms,
        score_ms: median(score_times),
        sample_seconds,
        phase1_seconds,
        phase1_layers_ms,
        phase2_seconds: sample_seconds - phase1_seconds,
        images_per_second: b.batch as f64 / sample_seconds,
        peak_rss_mib: peak_rss_bytes().map(|v| v as f64 / (1024.0 * 1024.0)),
        gpu_memory_mib: if sampler.provider().is_gpu() { gpu_memory_mib() } else { None },
    })
}

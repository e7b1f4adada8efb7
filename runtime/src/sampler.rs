//! The two-phase sampler, the score and log p on exported graphs (the functions the
//! [`crate::Sampler`] type drives; usable directly with a [`GraphSet`]).
//!
//! Phase 1 inverts the layers from last to first, one token per step with a KV cache (present
//! K/V values fed back as the next step's past, never copied to the host); guided layers run the
//! conditional and unconditional rows as one batch of 2B. Phase 2 runs the score K times:
//! x0 = x + t^2 score, x -= (x - x0) / t (t - t_next).

use itarflow_base::ModelConfig;
use itarflow_base::manifest::GraphKind;

use crate::RtError;
use crate::graphs::GraphSet;
use crate::model::Model;
use crate::provider::{Engine, HostTensor};

pub use itarflow_base::sampling::{CfgStyle, Guidance, SampleSettings, noise_levels};

/// The settings recorded in a package.
pub fn defaults(model: &Model) -> SampleSettings {
    let s = &model.manifest.sampler;
    SampleSettings {
        guidance: Guidance {
            scale: s.cfg,
            style: if s.cfg_style == "starflow" { CfgStyle::Starflow } else { CfgStyle::Tarflow },
            layers: s.guide_layers,
            annealed: s.annealed,
            uncond_temperature: 1.0,
        },
        t_max: s.t_max,
        t_min: s.t_min,
        denoise_steps: s.denoise_steps,
        clip: false,
        denoise_batch: 64,
    }
}

/// Which KV cache phase 1 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepCache {
    /// Past K/V grow by one token per step (Concat): the least work; the default.
    #[default]
    Growing,
    /// Fixed-length K/V written in place (ScatterElements) with masked attention: static shapes
    /// but the batch, for TensorRT engines.
    Fixed,
}

impl StepCache {
    /// The step graphs of this cache.
    pub fn graph_kind(self) -> GraphKind {
        match self {
            StepCache::Growing => GraphKind::Step,
            StepCache::Fixed => GraphKind::StepFixed,
        }
    }

    /// Length of the K/V cache fed to the step at position `pos` of a layer of `tokens` tokens.
    pub fn past_len(self, tokens: usize, pos: usize) -> usize {
        match self {
            StepCache::Growing => pos,
            StepCache::Fixed => tokens,
        }
    }
}

/// How the score (grad_x log p) is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreForm {
    /// The whole-model score graph: fastest; its memory grows with depth.
    #[default]
    Whole,
    /// Forward graphs, then each layer's VJP graph from the top (forward recomputed inside):
    /// the activations of one layer alive at a time.
    Layerwise,
}

impl ScoreForm {
    /// The graph families this form runs.
    pub fn graph_kinds(self) -> &'static [GraphKind] {
        match self {
            ScoreForm::Whole => &[GraphKind::Score],
            ScoreForm::Layerwise => &[GraphKind::Forward, GraphKind::LayerVjp],
        }
    }
}

/// Progress of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A layer of a phase-1 batch was inverted.
    Invert { layer: usize, layers: usize, batch: usize, batches: usize },
    /// A denoising step finished (all images).
    Denoise { step: usize, steps: usize },
    /// Images with NaN/Inf are being sampled again from new noise.
    Retry { images: usize, attempt: usize },
}

/// Moves values between tokens (B, T, c) of patch p and images (B, C, S, S):
/// `to_image` selects the direction.
fn repack(x: &[f32], b: usize, c: &ModelConfig, p: usize, to_image: bool) -> Vec<f32> {
    let (s, ch, g) = (c.img_size, c.in_channels, c.img_size / p);
    let mut out = vec![0.0; x.len()];
    let tok = ch * p * p;
    for n in 0..b {
        for gi in 0..g {
            for gj in 0..g {
                for k in 0..ch {
                    for pi in 0..p {
                        for pj in 0..p {
                            let token = ((n * g * g + gi * g + gj) * tok) + (k * p + pi) * p + pj;
                            let pixel = ((n * ch + k) * s + gi * p + pi) * s + gj * p + pj;
                            if to_image {
                                out[pixel] = x[token];
                            } else {
                                out[token] = x[pixel];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn unpatchify(x: &[f32], b: usize, c: &ModelConfig, p: usize) -> Vec<f32> {
    repack(x, b, c, p, true)
}

fn patchify(img: &[f32], b: usize, c: &ModelConfig, p: usize) -> Vec<f32> {
    repack(img, b, c, p, false)
}

/// Tokens of patch `from` as tokens of patch `to` (the same pixels; a permutation whose
/// inverse is the swap of `from` and `to`).
fn repatch(x: &[f32], b: usize, c: &ModelConfig, from: usize, to: usize) -> Vec<f32> {
    if from == to { x.to_vec() } else { patchify(&unpatchify(x, b, c, from), b, c, to) }
}

/// Phase 1: images (B, C, H, W) at noise level t_max from prior noise `z` (B, T, c), row-major.
pub fn invert<E: Engine>(
    graphs: &GraphSet<E>,
    z: &[f32],
    labels: &[i64],
    s: &SampleSettings,
    cache: StepCache,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, RtError> {
    let model = graphs.model();
    let m = &model.manifest;
    let c = &m.model;
    let b = labels.len();
    let layers = m.layers.len();
    let last = &m.layers[layers - 1];
    if z.len() != b * last.tokens * last.token_dim {
        return Err(RtError::Invalid(format!(
            "prior noise has {} values; {b} images need (B, T, c) = ({b}, {}, {})",
            z.len(),
            last.tokens,
            last.token_dim
        )));
    }
    let conds = graphs.get(GraphKind::Cond)?;
    let steps_g = graphs.get(cache.graph_kind())?;
    let std: Vec<f32> = model.var.iter().map(|v| v.sqrt()).collect();
    let mut x: Vec<f32> = z.iter().enumerate().map(|(i, v)| v * std[i % std.len()]).collect();
    for (i, l) in (0..layers).rev().enumerate() {
        if i > 0 {
            x = repatch(&x, b, c, c.patch_size(l + 1), c.patch_size(l));
        }
        let info = &m.layers[l];
        let (tokens, width) = (info.tokens, info.token_dim);
        let guided = s.guidance.guides(i) && c.num_classes > 0;
        let rows = if guided { 2 * b } else { b };
        let (cond_g, step_g) = (&conds[l], &steps_g[l]);
        let mut cond_in = vec![cond_g.upload(&HostTensor::F32(vec![rows], vec![s.t_max as f32; rows]))?];
        if c.num_classes > 0 {
            let mut y = labels.to_vec();
            if guided {
                y.extend(std::iter::repeat_n(-1, b));
            }
            cond_in.push(cond_g.upload(&HostTensor::I64(vec![rows], y))?);
        }
        // Both graphs run on the same provider: the cond output feeds the steps as it is.
        let cond = cond_g.run_values(cond_in.iter().collect())?.remove(0);
        let mut inv_temp = vec![1.0f32; b];
        if guided {
            inv_temp.extend(std::iter::repeat_n((1.0 / s.guidance.uncond_temperature) as f32, b));
        }
        let inv_temp = step_g.upload(&HostTensor::F32(vec![rows], inv_temp))?;
        let len = cache.past_len(tokens, 0);
        let empty = HostTensor::F32(vec![rows, info.heads, len, info.head_dim], vec![0.0; rows * info.heads * len * info.head_dim]);
        let mut past: Vec<E::Value> = (0..2 * info.blocks).map(|_| step_g.upload(&empty)).collect::<Result<_, _>>()?;
        // Tokens in the layer's permuted order, one Vec per position.
        let perm = |n: usize| if info.flip { tokens - 1 - n } else { n };
        let mut seq: Vec<Vec<f32>> = (0..tokens)
            .map(|n| (0..b).flat_map(|r| x[(r * tokens + perm(n)) * width..(r * tokens + perm(n) + 1) * width].to_vec()).collect())
            .collect();
        let steps = tokens - 1;
        for n in 0..steps {
            let mut token = seq[n].clone();
            if guided {
                token.extend_from_within(..);
            }
            let token = step_g.upload(&HostTensor::F32(vec![rows, width], token))?;
            let pos = step_g.upload(&HostTensor::I64(vec![], vec![n as i64]))?;
            let mut feeds = vec![&token, &pos, &cond, &inv_temp];
            feeds.extend(past.iter());
            let mut out = step_g.run_values(feeds)?;
            past = out.split_off(2);
            let a = step_g.download(&out[0])?.into_f32();
            let sh = step_g.download(&out[1])?.into_f32();
            let half = b * width;
            let mut scale: Vec<f32> = a[..half].iter().map(|v| v.exp()).collect();
            let mut shift = sh[..half].to_vec();
            if guided {
                let su: Vec<f32> = a[half..].iter().map(|v| v.exp()).collect();
                s.guidance.combine_slices(s.guidance.weight(n, steps), &mut scale, &mut shift, &su, &sh[half..]);
            }
            for ((v, sc), bb) in seq[n + 1].iter_mut().zip(&scale).zip(&shift) {
                *v = *v * sc + bb;
            }
        }
        for (n, tok) in seq.iter().enumerate() {
            for r in 0..b {
                let dst = (r * tokens + perm(n)) * width;
                x[dst..dst + width].copy_from_slice(&tok[r * width..(r + 1) * width]);
            }
        }
        progress(Progress::Invert { layer: i + 1, layers, batch: 1, batches: 1 });
    }
    let mut img = unpatchify(&x, b, c, c.patch_size(0));
    if c.input_scale != 1.0 {
        img.iter_mut().for_each(|v| *v /= c.input_scale as f32);
    }
    Ok(img)
}

/// Uploads the conditioning inputs (t and, for a conditional model, y) of `n` rows.
fn cond_feeds<E: Engine>(g: &E, c: &ModelConfig, t: &[f32], labels: &[i64]) -> Result<Vec<E::Value>, RtError> {
    let mut v = vec![g.upload(&HostTensor::F32(vec![t.len()], t.to_vec()))?];
    if c.num_classes > 0 {
        v.push(g.upload(&HostTensor::I64(vec![labels.len()], labels.to_vec()))?);
    }
    Ok(v)
}

fn check_batch(model: &Model, x: &[f32], t: &[f32], labels: &[i64]) -> Result<(), RtError> {
    let b = t.len();
    if x.len() != b * model.image_len() || labels.len() != b {
        return Err(RtError::Invalid(format!(
            "{} image values, {} noise levels and {} labels do not describe one batch of images of {} values",
            x.len(),
            b,
            labels.len(),
            model.image_len()
        )));
    }
    Ok(())
}

/// `n` items as consecutive (start, len) chunks of at most `batch` (0 = one chunk of all).
pub(crate) fn chunks(n: usize, batch: usize) -> Vec<(usize, usize)> {
    let size = if batch == 0 { n.max(1) } else { batch };
    (0..n).step_by(size).map(|start| (start, size.min(n - start))).collect()
}

/// A batch's pass through the per-layer forward graphs.
struct ForwardPass {
    /// Each layer's input tokens.
    inputs: Vec<Vec<f32>>,
    /// The last layer's output.
    z: Vec<f32>,
    logp: Vec<f32>,
}

fn forward_pass<E: Engine>(graphs: &GraphSet<E>, x: &[f32], t: &[f32], labels: &[i64]) -> Result<ForwardPass, RtError> {
    let model = graphs.model();
    let c = &model.manifest.model;
    let fwd = graphs.get(GraphKind::Forward)?;
    let n = t.len();
    let mut h = patchify(x, n, c, c.patch_size(0));
    if c.input_scale != 1.0 {
        h.iter_mut().for_each(|v| *v *= c.input_scale as f32);
    }
    let mut inputs = Vec::with_capacity(c.num_layers);
    let mut logdet = vec![0.0f64; n];
    for (l, g) in fwd.iter().enumerate() {
        if l > 0 {
            h = repatch(&h, n, c, c.patch_size(l - 1), c.patch_size(l));
        }
        let info = &model.manifest.layers[l];
        let mut feeds = vec![g.upload(&HostTensor::F32(vec![n, info.tokens, info.token_dim], h.clone()))?];
        feeds.extend(cond_feeds(g, c, t, labels)?);
        let out = g.run_values(feeds.iter().collect())?;
        inputs.push(std::mem::replace(&mut h, g.download(&out[0])?.into_f32()));
        for (acc, v) in logdet.iter_mut().zip(g.download(&out[1])?.f32()) {
            *acc += *v as f64;
        }
    }
    let d = c.data_dim() as f64;
    let per = h.len() / n.max(1);
    let logp = (0..n)
        .map(|r| {
            let sq: f64 = h[r * per..(r + 1) * per].iter().map(|v| (*v as f64).powi(2)).sum();
            (-0.5 * sq + d * (logdet[r] + c.input_scale.ln()) - 0.5 * d * (2.0 * std::f64::consts::PI).ln()) as f32
        })
        .collect();
    Ok(ForwardPass { inputs, z: h, logp })
}

/// log p(x | t, y) of images (B, C, H, W) through the per-layer forward graphs, in batches.
pub fn log_prob<E: Engine>(graphs: &GraphSet<E>, x: &[f32], t: &[f32], labels: &[i64], batch: usize) -> Result<Vec<f32>, RtError> {
    let model = graphs.model();
    check_batch(model, x, t, labels)?;
    let per = model.image_len();
    let mut logp = Vec::with_capacity(t.len());
    for (s, n) in chunks(t.len(), batch) {
        logp.extend(forward_pass(graphs, &x[s * per..(s + n) * per], &t[s..s + n], &labels[s..s + n])?.logp);
    }
    Ok(logp)
}

/// Scores (B, C, H, W) and log p (B,) of a batch.
type Scored = (Vec<f32>, Vec<f32>);

/// Score and log p of one batch of images (B, C, H, W) in one run of the graphs.
fn score_batch<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm, xs: &[f32], ts: &[f32], ys: &[i64]) -> Result<Scored, RtError> {
    let model = graphs.model();
    let c = &model.manifest.model;
    let n = ts.len();
    match form {
        ScoreForm::Whole => {
            let g = graphs.score()?;
            let mut feeds = vec![g.upload(&HostTensor::F32(vec![n, c.in_channels, c.img_size, c.img_size], xs.to_vec()))?];
            feeds.extend(cond_feeds(g, c, ts, ys)?);
            let out = g.run_values(feeds.iter().collect())?;
            Ok((g.download(&out[0])?.into_f32(), g.download(&out[1])?.into_f32()))
        }
        ScoreForm::Layerwise => {
            let ForwardPass { inputs, z, logp } = forward_pass(graphs, xs, ts, ys)?;
            let vjp = graphs.get(GraphKind::LayerVjp)?;
            let d = c.data_dim() as f32;
            // d log p / d z = -z; d log p / d logdet_l = D for every layer.
            let mut gz: Vec<f32> = z.iter().map(|v| -v).collect();
            for l in (0..c.num_layers).rev() {
                let (g, info) = (&vjp[l], &model.manifest.layers[l]);
                let shape = vec![n, info.tokens, info.token_dim];
                let mut feeds = vec![g.upload(&HostTensor::F32(shape.clone(), inputs[l].clone()))?];
                feeds.extend(cond_feeds(g, c, ts, ys)?);
                feeds.push(g.upload(&HostTensor::F32(shape, gz))?);
                feeds.push(g.upload(&HostTensor::F32(vec![n], vec![d; n]))?);
                let out = g.run_values(feeds.iter().collect())?;
                gz = g.download(&out[0])?.into_f32();
                if l > 0 {
                    gz = repatch(&gz, n, c, c.patch_size(l), c.patch_size(l - 1));
                }
            }
            let mut gx = unpatchify(&gz, n, c, c.patch_size(0));
            if c.input_scale != 1.0 {
                gx.iter_mut().for_each(|v| *v *= c.input_scale as f32);
            }
            Ok((gx, logp))
        }
    }
}

/// `n` items in at most `parts` consecutive (start, len) ranges of near-equal size.
pub(crate) fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|k| (k * n / parts, (k + 1) * n / parts - k * n / parts)).filter(|&(_, len)| len > 0).collect()
}

/// Threads one score batch is split over: the graph set's threads on an engine whose runs can
/// share a graph (tract), else 1 (ONNX Runtime parallelises inside each run).
fn score_threads<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm) -> Result<usize, RtError> {
    let g = &graphs.get(form.graph_kinds()[0])?[0];
    Ok(if g.concurrent() { graphs.threads() } else { 1 })
}

/// Score and log p of images (B, C, H, W) at per-image noise levels, in batches of `batch`; on an
/// engine that runs concurrently, each batch is split over the graph set's threads.
pub fn score<E: Engine>(
    graphs: &GraphSet<E>,
    form: ScoreForm,
    x: &[f32],
    t: &[f32],
    labels: &[i64],
    batch: usize,
) -> Result<Scored, RtError> {
    let model = graphs.model();
    check_batch(model, x, t, labels)?;
    let per = model.image_len();
    let threads = score_threads(graphs, form)?;
    let (mut scores, mut logps) = (Vec::with_capacity(x.len()), Vec::with_capacity(t.len()));
    for (s, n) in chunks(t.len(), batch) {
        let parts = split(n, threads);
        let run = |(a, len): (usize, usize)| {
            let (a, b) = (s + a, s + a + len);
            score_batch(graphs, form, &x[a * per..b * per], &t[a..b], &labels[a..b])
        };
        let results: Vec<Result<Scored, RtError>> = if parts.len() == 1 {
            vec![run(parts[0])]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = parts.iter().map(|&p| scope.spawn(move || run(p))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(RtError::Invalid("a scoring thread panicked".into())))).collect()
            })
        };
        for r in results {
            let (sc, lp) = r?;
            scores.extend(sc);
            logps.extend(lp);
        }
    }
    Ok((scores, logps))
}

/// Makes the graphs of phase 2 ready for `images` images scored `batch` at a time (tract builds a
/// plan per batch size): run on a second thread while phase 1 runs, it takes that work off the
/// critical path.
pub fn prepare_phase2<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm, images: usize, batch: usize) -> Result<(), RtError> {
    let threads = score_threads(graphs, form)?;
    // The run sizes `score` will use: its chunks, each split over the threads.
    let mut sizes: Vec<usize> =
        chunks(images, batch).into_iter().flat_map(|(_, c)| split(c, threads).into_iter().map(|(_, len)| len)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &kind in form.graph_kinds() {
        for g in graphs.get(kind)? {
            for &n in &sizes {
                g.prepare(n)?;
            }
        }
    }
    Ok(())
}

/// Phase 2: the Euler denoiser from t_max to t_min, in place, scoring `batch` images at a time.
pub fn denoise<E: Engine>(
    graphs: &GraphSet<E>,
    form: ScoreForm,
    x: &mut [f32],
    labels: &[i64],
    s: &SampleSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RtError> {
    let b = labels.len();
    let mut ts = noise_levels(s.t_max, s.t_min, s.denoise_steps);
    ts.push(0.0);
    for i in 0..s.denoise_steps {
        let (t, next) = (ts[i], ts[i + 1]);
        let (sc, _) = score(graphs, form, x, &vec![t as f32; b], labels, s.denoise_batch)?;
        let (t32, tt) = (t as f32, (t * t) as f32);
        let step = (t - next) as f32;
        for (v, g) in x.iter_mut().zip(&sc) {
            let mut x0 = *v + tt * g;
            if s.clip {
                x0 = x0.clamp(-1.0, 1.0);
            }
            let vel = (*v - x0) / t32;
            *v -= vel * step;
        }
        progress(Progress::Denoise { step: i + 1, steps: s.denoise_steps });
    }
    Ok(())
}

/// Indices of the images (of `per` values each) holding a NaN or Inf.
pub fn non_finite(x: &[f32], per: usize) -> Vec<usize> {
    x.chunks(per.max(1)).enumerate().filter(|(_, img)| img.iter().any(|v| !v.is_finite())).map(|(i, _)| i).collect()
}

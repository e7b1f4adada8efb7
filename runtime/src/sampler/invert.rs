//! Phase 1, autoregressive inversion: the layers from last to first, token by token; guided
//! layers run the conditional and unconditional rows as one batch of 2B.
//!
//! Two ways to run a layer's T - 1 steps ([`Inversion`]):
//! - step graphs: one run per token with a KV cache (present K/V values fed back as the next
//!   step's past, never copied to the host), the next token computed on the host from the
//!   step's (a, b) and the guidance;
//! - a loop: the fused inversion graph holds the token update and the guidance too, so each run's
//!   outputs are the next run's inputs and the layer runs without the host ([`Engine::run_loop`]:
//!   on a GPU, in device buffers, replayed as a captured CUDA graph).

use itarflow_base::manifest::GraphKind;

use super::layout::{repatch, unpatchify};
use super::{Cancel, CfgStyle, Progress, SampleSettings, StepCache};
use crate::RtError;
use crate::graphs::GraphSet;
use crate::provider::{Engine, HostTensor, LoopInit};

/// How phase 1 runs a layer's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inversion {
    /// A step graph per token with this KV cache, the update on the host.
    Steps(StepCache),
    /// The fused inversion graphs as a loop (fixed-length cache, update and guidance inside).
    Loop,
}

/// One layer's inversion: its index, its tokens (B, T, c) in the layer's permuted order, and
/// whether it is guided.
struct LayerRun<'a> {
    l: usize,
    b: usize,
    guided: bool,
    seq: &'a mut [f32],
}

/// Phase 1: images (B, C, H, W) at noise level t_max from prior noise `z` (B, T, c), row-major.
pub fn invert<E: Engine>(
    graphs: &GraphSet<E>,
    z: &[f32],
    labels: &[i64],
    s: &SampleSettings,
    how: Inversion,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, RtError> {
    let model = graphs.model();
    let m = &model.manifest;
    let c = &m.model;
    let b = labels.len();
    let layers = m.layers.len();
    let last = &m.layers[layers - 1];
    if z.len() != b * last.tokens * last.token_dim {
        return Err(RtError::Input(format!(
            "prior noise has {} values; {b} images need (B, T, c) = ({b}, {}, {})",
            z.len(),
            last.tokens,
            last.token_dim
        )));
    }
    let std: Vec<f32> = model.var.iter().map(|v| v.sqrt()).collect();
    let mut x: Vec<f32> = z.iter().enumerate().map(|(i, v)| v * std[i % std.len()]).collect();
    for (i, l) in (0..layers).rev().enumerate() {
        cancel.check()?;
        if i > 0 {
            x = repatch(&x, b, c, c.patch_size(l + 1), c.patch_size(l));
        }
        let info = &m.layers[l];
        let (tokens, width) = (info.tokens, info.token_dim);
        let guided = s.guidance.guides(i) && c.num_classes > 0;
        // Tokens in the layer's permuted order.
        let perm = |n: usize| if info.flip { tokens - 1 - n } else { n };
        let mut seq = vec![0.0f32; x.len()];
        for r in 0..b {
            for n in 0..tokens {
                let (src, dst) = ((r * tokens + perm(n)) * width, (r * tokens + n) * width);
                seq[dst..dst + width].copy_from_slice(&x[src..src + width]);
            }
        }
        let run = LayerRun { l, b, guided, seq: &mut seq };
        match how {
            Inversion::Steps(cache) => invert_by_steps(graphs, run, labels, s, cache, cancel)?,
            Inversion::Loop => invert_by_loop(graphs, run, labels, s)?,
        }
        for r in 0..b {
            for n in 0..tokens {
                let (dst, src) = ((r * tokens + perm(n)) * width, (r * tokens + n) * width);
                x[dst..dst + width].copy_from_slice(&seq[src..src + width]);
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

/// Layer `l`'s conditioning at t of `labels`, computed by the cond graph and left where it ran
/// (on the device on a GPU), since the step graphs of the same provider take it as it is.
fn layer_cond<E: Engine>(graphs: &GraphSet<E>, l: usize, labels: &[i64], t: f64) -> Result<E::Value, RtError> {
    let g = &graphs.get(GraphKind::Cond)?[l];
    let rows = labels.len();
    let mut feeds = vec![g.upload(&HostTensor::F32(vec![rows], vec![t as f32; rows]))?];
    if graphs.model().num_classes() > 0 {
        feeds.push(g.upload(&HostTensor::I64(vec![rows], labels.to_vec()))?);
    }
    Ok(g.run_values(feeds.iter().collect())?.remove(0))
}

/// The labels of a layer's rows: the images', followed on a guided layer by as many
/// unconditional rows.
fn row_labels(labels: &[i64], guided: bool) -> Vec<i64> {
    let mut y = labels.to_vec();
    if guided {
        y.extend(std::iter::repeat_n(-1, labels.len()));
    }
    y
}

/// The inverse attention temperature of a guided layer's unconditional rows.
fn uncond_inv_temp(s: &SampleSettings) -> f32 {
    (1.0 / s.guidance.uncond_temperature) as f32
}

/// The layer's steps through its step graph, one run per token, the update on the host.
fn invert_by_steps<E: Engine>(
    graphs: &GraphSet<E>,
    run: LayerRun,
    labels: &[i64],
    s: &SampleSettings,
    cache: StepCache,
    cancel: &Cancel,
) -> Result<(), RtError> {
    let LayerRun { l, b, guided, seq } = run;
    let info = &graphs.model().manifest.layers[l];
    let (tokens, width) = (info.tokens, info.token_dim);
    let rows = if guided { 2 * b } else { b };
    // The step graphs of the same provider take the cond graph's output as it is.
    let cond = &layer_cond(graphs, l, &row_labels(labels, guided), s.t_max)?;
    let step_g = &graphs.get(cache.graph_kind())?[l];
    let mut inv_temp = vec![1.0f32; b];
    if guided {
        inv_temp.extend(std::iter::repeat_n(uncond_inv_temp(s), b));
    }
    let inv_temp = step_g.upload(&HostTensor::F32(vec![rows], inv_temp))?;
    let len = cache.past_len(tokens, 0);
    let empty = HostTensor::F32(vec![rows, info.heads, len, info.head_dim], vec![0.0; rows * info.heads * len * info.head_dim]);
    let mut past: Vec<E::Value> = (0..2 * info.blocks).map(|_| step_g.upload(&empty)).collect::<Result<_, _>>()?;
    let token_at = |seq: &[f32], n: usize| -> Vec<f32> {
        (0..b).flat_map(|r| seq[(r * tokens + n) * width..(r * tokens + n + 1) * width].to_vec()).collect()
    };
    let steps = tokens - 1;
    for n in 0..steps {
        cancel.check()?;
        let mut token = token_at(seq, n);
        if guided {
            token.extend_from_within(..);
        }
        let token = step_g.upload(&HostTensor::F32(vec![rows, width], token))?;
        let pos = step_g.upload(&HostTensor::I64(vec![], vec![n as i64]))?;
        let mut feeds = vec![&token, &pos, cond, &inv_temp];
        feeds.extend(past.iter());
        let mut out = step_g.run_values(feeds)?;
        past = out.split_off(2);
        let a = step_g.download(&out[0])?.into_f32()?;
        let sh = step_g.download(&out[1])?.into_f32()?;
        let half = b * width;
        let mut scale: Vec<f32> = a[..half].iter().map(|v| v.exp()).collect();
        let mut shift = sh[..half].to_vec();
        if guided {
            let su: Vec<f32> = a[half..].iter().map(|v| v.exp()).collect();
            s.guidance.combine_slices(s.guidance.weight(n, steps), &mut scale, &mut shift, &su, &sh[half..]);
        }
        for r in 0..b {
            let dst = (r * tokens + n + 1) * width;
            for k in 0..width {
                let v = &mut seq[dst + k];
                *v = *v * scale[r * width + k] + shift[r * width + k];
            }
        }
    }
    Ok(())
}

/// The layer's steps as one loop of its fused inversion graph.
fn invert_by_loop<E: Engine>(graphs: &GraphSet<E>, run: LayerRun, labels: &[i64], s: &SampleSettings) -> Result<(), RtError> {
    let LayerRun { l, b, guided, seq } = run;
    let model = graphs.model();
    let info = &model.manifest.layers[l];
    let (tokens, width) = (info.tokens, info.token_dim);
    let kind = if guided { guided_loop_kind(model, s.guidance.style) } else { GraphKind::Invert };
    let g = &graphs.get(kind)?[l];
    let entry = graphs.entry(kind, Some(l))?;
    let steps = tokens - 1;
    // A guided layer's conditioning: both branches' rows in one run of the cond graph, brought
    // to the host once per layer and passed stacked (or apart, to a format-3 graph).
    let cond = layer_cond(graphs, l, &row_labels(labels, guided), s.t_max)?;
    let mut guidance = Vec::new();
    if guided {
        let both = graphs.get(GraphKind::Cond)?[l].download(&cond)?.into_f32()?;
        let (c, cu) = both.split_at(b * info.width);
        let mut w: Vec<f32> = (0..steps).map(|n| s.guidance.weight(n, steps) as f32).collect();
        w.push(0.0);
        let inputs = GuidedInputs { images: b, cond: c, cond_u: cu, inv_temp_u: uncond_inv_temp(s), weights: w, style: s.guidance.style };
        for t in inputs.host(entry, info.width) {
            guidance.push(g.upload(&t)?);
        }
    }
    let fixed: Vec<&E::Value> = if guided { guidance.iter().collect() } else { vec![&cond] };
    let mut state =
        vec![LoopInit::Host(HostTensor::F32(vec![b, tokens, width], seq.to_vec())), LoopInit::Host(HostTensor::I64(vec![], vec![0]))];
    state.extend(empty_caches(entry, b));
    let out = g.run_loop(&fixed, state, steps, 1)?.remove(0).into_f32()?;
    seq.copy_from_slice(&out);
    Ok(())
}

/// What a guided fused inversion graph takes before its state, from host data.
pub struct GuidedInputs<'a> {
    pub images: usize,
    /// Both branches' conditioning, (N, C) each.
    pub cond: &'a [f32],
    pub cond_u: &'a [f32],
    /// The unconditional rows' inverse attention temperature.
    pub inv_temp_u: f32,
    /// The guidance weight of each step (T,).
    pub weights: Vec<f32>,
    pub style: CfgStyle,
}

impl GuidedInputs<'_> {
    /// The inputs in the graph's order: since package format 4 both branches' cond (2, N, C),
    /// inv_temp (2, N) and cfg_w; format 3's graph took cond, cond_u, inv_temp_u (N,), cfg_w and
    /// the style (`starflow`).
    pub fn host(self, entry: &itarflow_base::manifest::GraphEntry, width: usize) -> Vec<HostTensor> {
        let n = self.images;
        if entry.inputs.iter().any(|t| t.name == "cond_u") {
            let mut v = vec![
                HostTensor::F32(vec![n, width], self.cond.to_vec()),
                HostTensor::F32(vec![n, width], self.cond_u.to_vec()),
                HostTensor::F32(vec![n], vec![self.inv_temp_u; n]),
                HostTensor::F32(vec![self.weights.len()], self.weights),
            ];
            if takes_style(entry) {
                v.push(HostTensor::F32(vec![], vec![if self.style == CfgStyle::Starflow { 1.0 } else { 0.0 }]));
            }
            return v;
        }
        let mut inv_temp = vec![1.0; n];
        inv_temp.extend(std::iter::repeat_n(self.inv_temp_u, n));
        vec![
            HostTensor::F32(vec![2, n, width], [self.cond, self.cond_u].concat()),
            HostTensor::F32(vec![2, n], inv_temp),
            HostTensor::F32(vec![self.weights.len()], self.weights),
        ]
    }
}

/// The fused inversion graph of a guided layer for `style`: a graph per style since package
/// format 4; format 3's one graph (`invert_guided`) takes the style as its `starflow` input.
pub fn guided_loop_kind(model: &crate::model::Model, style: CfgStyle) -> GraphKind {
    let per_style = model.manifest.graphs.iter().any(|g| g.kind == GraphKind::InvertGuidedStarflow);
    match style {
        CfgStyle::Starflow if per_style => GraphKind::InvertGuidedStarflow,
        _ => GraphKind::InvertGuided,
    }
}

/// Whether a guided fused inversion graph takes the style as an input (`starflow`, a scalar
/// after cfg_w: packages of format 3).
fn takes_style(entry: &itarflow_base::manifest::GraphEntry) -> bool {
    entry.inputs.iter().any(|t| t.name == "starflow")
}

/// Zero KV caches for a fused inversion graph of `images` images, shaped and typed as its
/// manifest entry declares them (guided graphs hold both branches; fp16 graphs keep them in fp16).
pub fn empty_caches<V>(entry: &itarflow_base::manifest::GraphEntry, images: usize) -> Vec<LoopInit<V>> {
    entry
        .inputs
        .iter()
        .filter(|t| t.name.starts_with("past_"))
        .map(|spec| {
            let shape = spec.shape.iter().map(|d| d.as_u64().map_or(images, |n| n as usize)).collect();
            LoopInit::Zeros(spec.dtype.clone(), shape)
        })
        .collect()
}

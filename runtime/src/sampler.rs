//! The two-phase sampler on exported graphs.
//!
//! Phase 1 inverts the layers from last to first, one token per step with the growing KV cache
//! (present K/V values fed back as the next step's past, never copied to the host); guided
//! layers run the conditional and unconditional rows as one batch of 2B. Phase 2 runs the score
//! graph K times: x0 = x + t^2 score, x -= (x - x0) / t (t - t_next).

use itarflow_base::ModelConfig;

use crate::RtError;
use crate::model::{Graphs, Model};
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

/// Progress of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Invert { layer: usize, layers: usize },
    Denoise { step: usize, steps: usize },
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

/// Phase 1: images (B, C, H, W) at noise level t_max from prior noise `z` (B, T, c), row-major.
pub fn invert<E: Engine>(
    model: &Model,
    graphs: &Graphs<E>,
    z: &[f32],
    labels: &[i64],
    s: &SampleSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, RtError> {
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
    let std: Vec<f32> = model.var.iter().map(|v| v.sqrt()).collect();
    let mut x: Vec<f32> = z.iter().enumerate().map(|(i, v)| v * std[i % std.len()]).collect();
    for (i, l) in (0..layers).rev().enumerate() {
        if i > 0 && c.patch_size(l) != c.patch_size(l + 1) {
            x = patchify(&unpatchify(&x, b, c, c.patch_size(l + 1)), b, c, c.patch_size(l));
        }
        let info = &m.layers[l];
        let (tokens, width) = (info.tokens, info.token_dim);
        let guided = s.guidance.scale > 0.0 && i < s.guidance.layers && c.num_classes > 0;
        let rows = if guided { 2 * b } else { b };
        let (cond_g, step_g) = (&graphs.cond[l], &graphs.step[l]);
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
        let empty = HostTensor::F32(vec![rows, info.heads, 0, info.head_dim], vec![]);
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
                let w = if s.guidance.annealed { (n + 1) as f64 / steps as f64 * s.guidance.scale } else { s.guidance.scale };
                s.guidance.combine_slices(w, &mut scale, &mut shift, &su, &sh[half..]);
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
        progress(Progress::Invert { layer: i + 1, layers });
    }
    let mut img = unpatchify(&x, b, c, c.patch_size(0));
    if c.input_scale != 1.0 {
        img.iter_mut().for_each(|v| *v /= c.input_scale as f32);
    }
    Ok(img)
}

/// Score and log p of images (B, C, H, W) at per-image noise levels, in batches of `batch`.
pub fn score<E: Engine>(
    model: &Model,
    graph: &E,
    x: &[f32],
    t: &[f32],
    labels: &[i64],
    batch: usize,
) -> Result<(Vec<f32>, Vec<f32>), RtError> {
    let c = &model.manifest.model;
    let per = c.in_channels * c.img_size * c.img_size;
    let b = t.len();
    let chunk = if batch == 0 { b } else { batch.min(b).max(1) };
    let (mut scores, mut logps) = (Vec::with_capacity(x.len()), Vec::with_capacity(b));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let shape = vec![n, c.in_channels, c.img_size, c.img_size];
        let mut feeds = vec![
            graph.upload(&HostTensor::F32(shape, x[start * per..(start + n) * per].to_vec()))?,
            graph.upload(&HostTensor::F32(vec![n], t[start..start + n].to_vec()))?,
        ];
        if c.num_classes > 0 {
            feeds.push(graph.upload(&HostTensor::I64(vec![n], labels[start..start + n].to_vec()))?);
        }
        let out = graph.run_values(feeds.iter().collect())?;
        scores.extend(graph.download(&out[0])?.into_f32());
        logps.extend(graph.download(&out[1])?.into_f32());
    }
    Ok((scores, logps))
}

/// Phase 2: the Euler denoiser from t_max to t_min, in place.
pub fn denoise<E: Engine>(
    model: &Model,
    graph: &E,
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
        let (sc, _) = score(model, graph, x, &vec![t as f32; b], labels, s.denoise_batch)?;
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

/// Both phases: images (B, C, H, W) from prior noise `z`.
pub fn sample<E: Engine>(
    model: &Model,
    graphs: &Graphs<E>,
    z: &[f32],
    labels: &[i64],
    s: &SampleSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, RtError> {
    let mut x = invert(model, graphs, z, labels, s, progress)?;
    denoise(model, &graphs.score, &mut x, labels, s, progress)?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(RtError::NonFinite { index: i / (x.len() / labels.len().max(1)) });
    }
    Ok(x)
}

//! Phase 2, iterative denoising: K Euler steps of the score from t_max to t_min,
//! x0 = x + t^2 score (clipped to [-1, 1] if asked), x -= (x - x0) / t (t - t_next).
//!
//! Two ways ([`Denoising`]): the score graphs with the update on the host, or the denoising-step
//! graph (the update inside) as a loop whose state is the images, which on a GPU stay on the
//! device for all K steps.

use super::layout::chunks;
use super::score::score;
use super::{Cancel, Progress, SampleSettings, ScoreForm, noise_levels};
use crate::RtError;
use crate::graphs::GraphSet;
use crate::provider::{Engine, HostTensor, LoopInit};

/// How phase 2 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denoising {
    /// A score evaluation per step in this form, the Euler update on the host.
    Scores(ScoreForm),
    /// The denoising-step graph as a loop over the K steps.
    Loop,
}

/// Phase 2: the Euler denoiser from t_max to t_min, in place, `s.denoise_batch` images at a time.
pub fn denoise<E: Engine>(
    graphs: &GraphSet<E>,
    how: Denoising,
    x: &mut [f32],
    labels: &[i64],
    s: &SampleSettings,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RtError> {
    match how {
        Denoising::Scores(form) => denoise_by_scores(graphs, form, x, labels, s, cancel, progress),
        Denoising::Loop => denoise_by_loop(graphs, x, labels, s, cancel, progress),
    }
}

/// The K steps' noise levels, then 0.
fn levels_to_zero(s: &SampleSettings) -> Vec<f64> {
    let mut ts = noise_levels(s.t_max, s.t_min, s.denoise_steps);
    ts.push(0.0);
    ts
}

fn denoise_by_scores<E: Engine>(
    graphs: &GraphSet<E>,
    form: ScoreForm,
    x: &mut [f32],
    labels: &[i64],
    s: &SampleSettings,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RtError> {
    let ts = levels_to_zero(s);
    let b = labels.len();
    for i in 0..s.denoise_steps {
        cancel.check()?;
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

/// Each batch's K steps as one loop of the denoising-step graph (its state: the images and the
/// step index); progress is reported per batch.
fn denoise_by_loop<E: Engine>(
    graphs: &GraphSet<E>,
    x: &mut [f32],
    labels: &[i64],
    s: &SampleSettings,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), RtError> {
    let ts = levels_to_zero(s);
    let k = s.denoise_steps;
    if k == 0 {
        return Ok(());
    }
    let model = graphs.model();
    let c = &model.manifest.model;
    let per = model.image_len();
    let g = graphs.denoise_step()?;
    let levels: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
    let clip = if s.clip { vec![-1.0, 1.0] } else { vec![f32::NEG_INFINITY, f32::INFINITY] };
    let batches = chunks(labels.len(), s.denoise_batch);
    for (done, &(start, n)) in batches.iter().enumerate() {
        cancel.check()?;
        let mut fixed = vec![g.upload(&HostTensor::F32(vec![n, levels.len()], levels.repeat(n)))?];
        if c.num_classes > 0 {
            fixed.push(g.upload(&HostTensor::I64(vec![n], labels[start..start + n].to_vec()))?);
        }
        fixed.push(g.upload(&HostTensor::F32(vec![2], clip.clone()))?);
        let images = x[start * per..(start + n) * per].to_vec();
        let state = vec![
            LoopInit::Host(HostTensor::F32(vec![n, c.in_channels, c.img_size, c.img_size], images)),
            LoopInit::Host(HostTensor::I64(vec![], vec![0])),
        ];
        let out = g.run_loop(&fixed.iter().collect::<Vec<_>>(), state, k, 1)?.remove(0).into_f32()?;
        x[start * per..(start + n) * per].copy_from_slice(&out);
        progress(Progress::Denoise { step: k * (done + 1) / batches.len(), steps: k });
    }
    Ok(())
}

/// Indices of the images (of `per` values each) holding a NaN or Inf.
pub fn non_finite(x: &[f32], per: usize) -> Vec<usize> {
    x.chunks(per.max(1)).enumerate().filter(|(_, img)| img.iter().any(|v| !v.is_finite())).map(|(i, _)| i).collect()
}

//! Phase 2: iterative denoising with the model's own score.
//!
//! Tweedie: x0_hat(x, t) = x + t^2 grad_x log p(x, t). Euler on dx = -t score dt over
//! ts = linspace(t_max, t_min, K) followed by 0: at each t_i, x0 = x0_hat(x, t_i) (optionally
//! clipped to [-1, 1]), v = (x - x0) / t_i, x -= v (t_i - t_{i+1}). The last step lands on x0_hat
//! at t_min; K = 1 is the single-step Tweedie denoiser at t_max.

use burn::prelude::*;

use super::Progress;
use itarflow_base::sampling::SampleSettings;

use crate::model::{ITarFlow, Labels};

pub use itarflow_base::sampling::noise_levels;

/// The Tweedie estimate x + t^2 score(x, t) at one noise level for the whole batch.
pub fn tweedie(model: &ITarFlow, x: Tensor<4>, t: f64, labels: &Labels, clip: bool, batch_size: usize) -> Tensor<4> {
    let [b, _, _, _] = x.dims();
    let chunk = if batch_size == 0 { b } else { batch_size.min(b) };
    let all = labels.to_vec(b);
    let parts: Vec<Tensor<4>> = (0..b)
        .step_by(chunk)
        .map(|start| {
            let n = chunk.min(b - start);
            let xs = x.clone().narrow(0, start, n);
            let ls = match labels {
                Labels::None => Labels::None,
                Labels::Classes(_) => Labels::Classes(all[start..start + n].to_vec()),
            };
            let ts = Tensor::<1>::full([n], t, &xs.device());
            let (score, _) = model.score(xs.clone(), ts, &ls);
            let x0 = xs + score.mul_scalar(t * t);
            if clip { x0.clamp(-1.0, 1.0) } else { x0 }
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// Runs the Euler denoiser from `x` at `t_max` down to `t_min` with `denoise_steps` score
/// evaluations of `denoise_batch` images (guidance settings are not used here).
pub fn denoise(
    model: &ITarFlow,
    mut x: Tensor<4>,
    labels: &Labels,
    opts: &SampleSettings,
    progress: &mut dyn FnMut(Progress),
) -> Tensor<4> {
    let mut ts = noise_levels(opts.t_max, opts.t_min, opts.denoise_steps);
    ts.push(0.0);
    for i in 0..opts.denoise_steps {
        let (t, next) = (ts[i], ts[i + 1]);
        let x0 = tweedie(model, x.clone(), t, labels, opts.clip, opts.denoise_batch);
        let v = (x.clone() - x0).div_scalar(t);
        x = x - v.mul_scalar(t - next);
        progress(Progress::Denoise { step: i + 1, steps: opts.denoise_steps });
    }
    x
}

//! Both phases together: prior noise (seeded or given) to images.

use burn::prelude::*;

use super::{Guidance, Progress, denoise, reverse};
use crate::model::{ITarFlow, Labels};

/// Settings of a two-phase sampling run (shared with the runtime).
pub type SampleOptions = itarflow_base::sampling::SampleSettings;

/// The model's own noise range, 10 denoising steps (the paper's default), no guidance.
pub fn options_for(model: &ITarFlow) -> SampleOptions {
    SampleOptions {
        guidance: Guidance::default(),
        t_max: model.config.t_max,
        t_min: model.config.t_min,
        denoise_steps: 10,
        clip: false,
        denoise_batch: 64,
    }
}

/// The prior noise (B, T, c) of the last layer for `batch` images from `seed`.
pub fn seeded_noise(model: &ITarFlow, batch: usize, seed: u64) -> Tensor<3> {
    let c = &model.config;
    let last = c.num_layers - 1;
    let (t, w) = (c.tokens(last), c.token_dim(last));
    let data = itarflow_base::prior_noise(seed, batch * t * w);
    Tensor::from_data(TensorData::new(data, [batch, t, w]), &model.device())
}

/// Network evaluations a run makes (for progress bars): T-1 per layer, then the denoising steps.
pub fn total_steps(model: &ITarFlow, opts: &SampleOptions) -> u64 {
    let c = &model.config;
    (0..c.num_layers).map(|l| c.tokens(l) as u64 - 1).sum::<u64>() + opts.denoise_steps as u64
}

/// Phase 1 from `z`, then phase 2.
pub fn sample(model: &ITarFlow, z: Tensor<3>, labels: &Labels, opts: &SampleOptions, progress: &mut dyn FnMut(Progress)) -> Tensor<4> {
    let x = reverse(model, z, opts.t_max, labels, &opts.guidance, progress);
    if opts.denoise_steps == 0 {
        return x;
    }
    denoise(model, x, labels, opts, progress)
}

/// A grid of `per_class` samples of every class (one row per class; one row of unconditional
/// samples for an unconditional model), saved as PNG.
pub fn class_grid(
    model: &ITarFlow,
    per_class: usize,
    seed: u64,
    opts: &SampleOptions,
    path: &std::path::Path,
) -> Result<(), itarflow_base::GridError> {
    let k = model.config.num_classes;
    let labels =
        if k == 0 { Labels::None } else { Labels::Classes((0..k as i64).flat_map(|c| std::iter::repeat_n(c, per_class)).collect()) };
    let b = k.max(1) * per_class;
    let x = sample(model, seeded_noise(model, b, seed), &labels, opts, &mut |_| {});
    let dims = x.dims();
    let values = x.try_into_vec_as::<f32>().expect("f32 images");
    itarflow_base::save_grid(path, &values, dims, per_class)
}

//! The images an evaluation judges, sampled from a package deterministically for a seed.

use ndarray::Array4;

use crate::RtError;
use crate::sampler::{SampleSettings, Sampler};

/// Labels of an evaluation of `num` images: image i asks for class i mod K (every class equally
/// often), or -1 (unconditional) for all when `num_classes` is 0.
pub fn balanced_labels(num: usize, num_classes: usize) -> Vec<i64> {
    (0..num).map(|i| if num_classes == 0 { -1 } else { (i % num_classes) as i64 }).collect()
}

/// The images of an evaluation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// (N, C, H, W).
    pub images: Array4<f32>,
    /// The images that came out NaN/Inf and were sampled again from new noise (the sampler's
    /// [`crate::OnNonFinite::Retry`]), in order: an evaluation reports how many.
    pub redrawn: Vec<usize>,
}

/// Samples one image per label with `settings`. The prior noise of all of them is drawn from
/// `seed` at once, so the images are those of a single run over the whole set (as `itarflow-rt
/// sample --seed S` with these labels gives them) whatever `chunk`, the images per sampler run;
/// `progress(done)` follows each run. Non-finite images are handled by the sampler's policy.
pub fn generate(
    sampler: &Sampler,
    labels: &[i64],
    settings: &SampleSettings,
    seed: u64,
    chunk: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Generated, RtError> {
    let z = itarflow_base::prior_noise(seed, labels.len() * sampler.model().noise_len());
    generate_from(sampler, &z, labels, settings, chunk, progress)
}

/// [`generate`] from given prior noise `z` (one image's noise per label). An image that stays
/// non-finite is named by its place in the whole set, not in its chunk.
pub fn generate_from(
    sampler: &Sampler,
    z: &[f32],
    labels: &[i64],
    settings: &SampleSettings,
    chunk: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Generated, RtError> {
    if labels.is_empty() || chunk == 0 {
        return Err(RtError::Setting(format!("an evaluation needs images and a chunk size (got {} images, chunk {chunk})", labels.len())));
    }
    let m = sampler.model();
    let c = &m.manifest.model;
    let (per_z, per_x) = (m.noise_len(), m.image_len());
    if z.len() != labels.len() * per_z {
        return Err(RtError::Input(format!("prior noise has {} values; {} images need {per_z} each", z.len(), labels.len())));
    }
    let mut x = Vec::with_capacity(labels.len() * per_x);
    let mut redrawn = Vec::new();
    for start in (0..labels.len()).step_by(chunk) {
        let n = chunk.min(labels.len() - start);
        let s = sampler
            .sample_with(&z[start * per_z..(start + n) * per_z], &labels[start..start + n], settings, &mut |_| {})
            .map_err(|e| e.in_set_from(start))?;
        x.extend(s.images.iter().copied());
        redrawn.extend(s.retried.iter().map(|&(i, _)| start + i));
        progress(start + n);
    }
    let images =
        Array4::from_shape_vec((labels.len(), c.in_channels, c.img_size, c.img_size), x).map_err(|e| RtError::Internal(e.to_string()))?;
    Ok(Generated { images, redrawn })
}

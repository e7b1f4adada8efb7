//! The images an evaluation judges, sampled from a package deterministically for a seed.

use ndarray::Array4;

use crate::RtError;
use crate::sampler::{SampleSettings, Sampler};

/// Labels of an evaluation of `num` images: image i asks for class i mod K (every class equally
/// often), or -1 (unconditional) for all when `num_classes` is 0.
pub fn balanced_labels(num: usize, num_classes: usize) -> Vec<i64> {
    (0..num).map(|i| if num_classes == 0 { -1 } else { (i % num_classes) as i64 }).collect()
}

/// Samples one image per label with `settings`. The prior noise of all of them is drawn from
/// `seed` at once, so the images are those of a single run over the whole set (as `itarflow-rt
/// sample --seed S` with these labels gives them) whatever `chunk`, the images per sampler run;
/// `progress(done)` follows each run.
pub fn generate(
    sampler: &Sampler,
    labels: &[i64],
    settings: &SampleSettings,
    seed: u64,
    chunk: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Array4<f32>, RtError> {
    if labels.is_empty() || chunk == 0 {
        return Err(RtError::Setting(format!("an evaluation needs images and a chunk size (got {} images, chunk {chunk})", labels.len())));
    }
    let m = sampler.model();
    let c = &m.manifest.model;
    let (per_z, per_x) = (m.noise_len(), m.image_len());
    let z = itarflow_base::prior_noise(seed, labels.len() * per_z);
    let mut x = Vec::with_capacity(labels.len() * per_x);
    for start in (0..labels.len()).step_by(chunk) {
        let n = chunk.min(labels.len() - start);
        let s = sampler.sample_with(&z[start * per_z..(start + n) * per_z], &labels[start..start + n], settings, &mut |_| {})?;
        x.extend(s.images.iter().copied());
        progress(start + n);
    }
    Array4::from_shape_vec((labels.len(), c.in_channels, c.img_size, c.img_size), x).map_err(|e| RtError::Internal(e.to_string()))
}

//! NaN/Inf samples: reported, or sampled again from new noise (same labels), the other images
//! untouched.

use itarflow_base::GaussianNoise;

use super::Progress;
use super::denoise::non_finite;
use crate::RtError;

/// What to do when a sample comes out NaN or Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNonFinite {
    /// Return [`RtError::NonFinite`] naming the first such image.
    #[default]
    Fail,
    /// Sample those images again from new noise (same labels), up to this many extra attempts,
    /// then fail.
    Retry(usize),
}

impl OnNonFinite {
    /// The policy of a `--retries N` flag: fail at once for 0, else up to N redraws.
    pub fn retries(n: usize) -> Self {
        if n == 0 { OnNonFinite::Fail } else { OnNonFinite::Retry(n) }
    }

    fn attempts(self) -> usize {
        match self {
            OnNonFinite::Retry(n) => n,
            OnNonFinite::Fail => 0,
        }
    }
}

/// Samples images from prior noise and labels (both phases).
pub type SampleRun<'a> = dyn FnMut(&[f32], &[i64]) -> Result<Vec<f32>, RtError> + 'a;

/// Replaces the non-finite images of `x` (of `per_x` values each) by images that `run` makes from
/// new noise with the same labels, up to `policy`'s attempts. An image's new noise is drawn from
/// `seed`, the attempt and its own prior noise in `z` (`per_z` values per image; `z` and `labels`
/// are the run's inputs), so it does not depend on which other images share the run: an
/// evaluation gives the same images whatever its chunk size, and images of different prior noise
/// never share new noise. Returns (image, attempt) for every image replaced. Public so that
/// another sampler (Burn's, in `itarflow eval-quality --ckpt`) redraws exactly as this one.
pub fn resample_non_finite(
    x: &mut [f32],
    (z, labels): (&[f32], &[i64]),
    (per_z, per_x): (usize, usize),
    seed: u64,
    policy: OnNonFinite,
    run: &mut SampleRun,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<(usize, usize)>, RtError> {
    let mut retried = Vec::new();
    let mut bad = non_finite(x, per_x);
    let mut attempt = 0;
    while !bad.is_empty() {
        if attempt >= policy.attempts() {
            return Err(RtError::NonFinite { index: bad[0], attempts: attempt + 1 });
        }
        attempt += 1;
        progress(Progress::Retry { images: bad.len(), attempt });
        let stream = seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(attempt as u64);
        let z2: Vec<f32> =
            bad.iter().flat_map(|&i| GaussianNoise::new(stream ^ fingerprint(&z[i * per_z..(i + 1) * per_z])).sample_f32(per_z)).collect();
        let y2: Vec<i64> = bad.iter().map(|&i| labels[i]).collect();
        let x2 = run(&z2, &y2)?;
        let still = non_finite(&x2, per_x);
        for (k, &i) in bad.iter().enumerate() {
            x[i * per_x..(i + 1) * per_x].copy_from_slice(&x2[k * per_x..(k + 1) * per_x]);
            if !still.contains(&k) {
                retried.push((i, attempt));
            }
        }
        bad = still.into_iter().map(|k| bad[k]).collect();
    }
    Ok(retried)
}

/// FNV-1a over the bits of an image's prior noise: tells images apart, deterministically.
fn fingerprint(z: &[f32]) -> u64 {
    z.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3))
}

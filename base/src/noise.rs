//! Seeded standard-normal noise that is identical on every platform and in every engine.
//!
//! xoshiro256** seeded through SplitMix64, and the Box–Muller transform in f64. The sampler's
//! prior noise is drawn as one flat stream in row-major (B, T, c) order.

/// A deterministic stream of N(0, 1) samples.
#[derive(Debug, Clone)]
pub struct GaussianNoise {
    state: [u64; 4],
    spare: Option<f64>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl GaussianNoise {
    /// A stream determined by `seed` alone.
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let state = [splitmix64(&mut s), splitmix64(&mut s), splitmix64(&mut s), splitmix64(&mut s)];
        Self { state, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in the open interval (0, 1).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// One N(0, 1) sample.
    pub fn next_f64(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = self.next_open01();
        let u2 = self.next_open01();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` samples as f32.
    pub fn sample_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f64() as f32).collect()
    }

    /// A uniform integer in `0..n` (for random class labels).
    pub fn next_below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "next_below needs a positive bound");
        // Lemire's multiply-shift; the bias is < n / 2^64, far below anything observable here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The prior noise of a sampling run: `count` N(0, 1) values from `seed`, row-major (B, T, c).
pub fn prior_noise(seed: u64, count: usize) -> Vec<f32> {
    GaussianNoise::new(seed).sample_f32(count)
}

/// Random class labels of a sampling run, drawn from a stream of their own so that the noise of
/// a seed does not depend on whether the model is conditional.
pub fn random_labels(seed: u64, batch: usize, num_classes: usize) -> Vec<i64> {
    let mut g = GaussianNoise::new(seed ^ 0x6C61_6265_6C73_2121);
    (0..batch).map(|_| g.next_below(num_classes as u64) as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a = GaussianNoise::new(7).sample_f32(64);
        let b = GaussianNoise::new(7).sample_f32(64);
        let c = GaussianNoise::new(8).sample_f32(64);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn moments_are_standard_normal() {
        let n = 200_000;
        let v = GaussianNoise::new(1).sample_f32(n);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032, kurtosis ~0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
    }

    #[test]
    fn labels_cover_range_uniformly() {
        let mut g = GaussianNoise::new(3);
        let mut counts = [0usize; 10];
        for _ in 0..10_000 {
            counts[g.next_below(10) as usize] += 1;
        }
        for c in counts {
            assert!((900..1100).contains(&c), "{counts:?}");
        }
    }
}

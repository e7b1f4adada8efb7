//! Sampling settings shared by the Burn sampler and the runtime: classifier-free guidance, the
//! two phases' noise levels, and phase 2's schedule.
//!
//! Guidance of the per-token affine parameters, with scales s = exp(a) and shifts b of the
//! conditional (c) and unconditional (u) branches:
//! - `tarflow`: s = s_c + w (s_c - s_u), b = b_c + w (b_c - b_u);
//! - `starflow`: r = min(s_c / s_u, 1)^2, s = s_c / sqrt(1 + w - w r),
//!   b = ((1 + w) b_c - w r b_u) / (1 + w - w r).
//!
//! Annealed guidance uses w_n = (n + 1) / (T - 1) w at inversion step n.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CfgStyle {
    Tarflow,
    Starflow,
}

/// Guidance settings for phase 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// w; 0 disables guidance (and the unconditional branch).
    pub scale: f64,
    pub style: CfgStyle,
    /// Number of layers guided, counted in sampling order (1 = only the first layer inverted,
    /// the paper's choice); `usize::MAX` guides all.
    pub layers: usize,
    /// Ramp w linearly over the tokens.
    pub annealed: bool,
    /// Attention temperature of the unconditional branch.
    pub uncond_temperature: f64,
}

impl Default for Guidance {
    fn default() -> Self {
        Self { scale: 0.0, style: CfgStyle::Tarflow, layers: 1, annealed: false, uncond_temperature: 1.0 }
    }
}

impl Guidance {
    /// Whether the layer at position `i` in sampling order is guided.
    pub fn guides(&self, i: usize) -> bool {
        self.scale > 0.0 && i < self.layers
    }

    /// w at inversion step `n` of `steps` (= T - 1).
    pub fn weight(&self, n: usize, steps: usize) -> f64 {
        if self.annealed { (n + 1) as f64 / steps as f64 * self.scale } else { self.scale }
    }

    /// Combines conditional and unconditional (scale, shift) elementwise, in place into `sc`, `bc`.
    pub fn combine_slices(&self, w: f64, sc: &mut [f32], bc: &mut [f32], su: &[f32], bu: &[f32]) {
        let w = w as f32;
        for i in 0..sc.len() {
            match self.style {
                CfgStyle::Tarflow => {
                    sc[i] += w * (sc[i] - su[i]);
                    bc[i] += w * (bc[i] - bu[i]);
                }
                CfgStyle::Starflow => {
                    let r = (sc[i] / su[i]).min(1.0).powi(2);
                    let denom = 1.0 + w - w * r;
                    sc[i] /= denom.sqrt();
                    bc[i] = ((1.0 + w) * bc[i] - w * r * bu[i]) / denom;
                }
            }
        }
    }
}

/// Settings of a two-phase sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    pub guidance: Guidance,
    /// Noise level of phase 1 and start of phase 2.
    pub t_max: f64,
    pub t_min: f64,
    /// Phase 2 steps; 0 returns the noisy phase-1 images.
    pub denoise_steps: usize,
    /// Clip each Tweedie estimate to [-1, 1].
    pub clip: bool,
    /// Images per score evaluation in phase 2 (0 = all).
    pub denoise_batch: usize,
}

/// The K noise levels of phase 2, as torch.linspace(t_max, t_min, K) computes them in f32
/// (the first half counted from the start, the second from the end).
pub fn noise_levels(t_max: f64, t_min: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => vec![],
        1 => vec![t_max],
        k => {
            let (start, end) = (t_max as f32, t_min as f32);
            let step = (end - start) / (k - 1) as f32;
            (0..k).map(|i| (if i < k / 2 { start + step * i as f32 } else { end - step * (k - 1 - i) as f32 }) as f64).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starflow_with_equal_branches_is_the_conditional_branch() {
        let g = Guidance { scale: 2.0, style: CfgStyle::Starflow, ..Guidance::default() };
        let (mut s, mut b) = (vec![0.7f32, 1.3], vec![0.2f32, -0.4]);
        g.combine_slices(2.0, &mut s, &mut b, &[0.7, 1.3], &[0.2, -0.4]);
        assert!((s[0] - 0.7).abs() < 1e-6 && (b[1] + 0.4).abs() < 1e-6);
        // r = 1 when s_c = s_u: s = s_c / sqrt(1) and b = ((1 + w) b_c - w b_u) / 1.
        let (mut s, mut b) = (vec![0.5f32], vec![1.0f32]);
        g.combine_slices(2.0, &mut s, &mut b, &[1.0], &[0.0]);
        // r = 0.25, denom = 1 + 2 - 0.5 = 2.5: s = 0.5 / sqrt(2.5), b = 3 / 2.5.
        assert!((s[0] - 0.5 / 2.5f32.sqrt()).abs() < 1e-6 && (b[0] - 1.2).abs() < 1e-6, "{s:?} {b:?}");
    }

    #[test]
    fn linspace_ends_exactly() {
        let ts = noise_levels(0.3, 0.01, 10);
        assert_eq!(ts.len(), 10);
        assert_eq!(ts[0], 0.3f32 as f64);
        assert_eq!(ts[9], 0.01f32 as f64);
        assert_eq!(noise_levels(0.3, 0.01, 1), vec![0.3]);
    }
}

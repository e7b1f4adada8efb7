//! Classifier-free guidance of the per-token affine parameters.
//!
//! With scales s = exp(a) and shifts b of the conditional (c) and unconditional (u) branches:
//! - `tarflow`: s = s_c + w (s_c - s_u), b = b_c + w (b_c - b_u);
//! - `starflow`: r = min(s_c / s_u, 1)^2, s = s_c / sqrt(1 + w - w r),
//!   b = ((1 + w) b_c - w r b_u) / (1 + w - w r).
//!
//! Annealed guidance uses w_n = (n + 1) / (T - 1) w at inversion step n.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

    /// Combines conditional and unconditional (scale, shift) with weight `w`: returns (scale, shift).
    pub fn combine(
        &self,
        w: f64,
        (s_c, b_c): (Tensor<2>, Tensor<2>),
        (s_u, b_u): (Tensor<2>, Tensor<2>),
    ) -> (Tensor<2>, Tensor<2>) {
        match self.style {
            CfgStyle::Tarflow => {
                let s = s_c.clone() + (s_c - s_u).mul_scalar(w);
                let b = b_c.clone() + (b_c - b_u).mul_scalar(w);
                (s, b)
            }
            CfgStyle::Starflow => {
                let r = s_c.clone().div(s_u).clamp_max(1.0).square();
                let denom = r.clone().mul_scalar(-w).add_scalar(1.0 + w);
                let s = s_c.div(denom.clone().sqrt());
                let b = (b_c.mul_scalar(1.0 + w) - r.mul(b_u).mul_scalar(w)).div(denom);
                (s, b)
            }
        }
    }
}

//! Classifier-free guidance on tensors; the settings and formulas are in
//! [`itarflow_base::sampling`], shared with the runtime.

use burn::prelude::*;

pub use itarflow_base::sampling::{CfgStyle, Guidance};

/// Combines conditional and unconditional (scale, shift) with weight `w`: returns (scale, shift).
pub fn combine(g: &Guidance, w: f64, (s_c, b_c): (Tensor<2>, Tensor<2>), (s_u, b_u): (Tensor<2>, Tensor<2>)) -> (Tensor<2>, Tensor<2>) {
    match g.style {
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

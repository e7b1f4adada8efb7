//! The pre-norm MLP: LayerNorm, Linear(C, eC), exact (erf) GELU, Linear(eC, C).

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::{layer_norm, linear};

#[derive(Module, Debug)]
pub struct Mlp {
    pub norm: LayerNorm,
    /// The reference's `main.0`.
    pub fc1: Linear,
    /// The reference's `main.2`.
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(width: usize, expansion: usize, device: &Device) -> Self {
        Self {
            norm: layer_norm(width, device),
            fc1: linear(width, width * expansion, device),
            fc2: linear(width * expansion, width, device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(gelu(self.fc1.forward(self.norm.forward(x))))
    }
}

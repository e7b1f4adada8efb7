//! One pre-norm transformer block: h += attention(h); h += mlp(h).

use burn::prelude::*;

use super::{Attention, KvCache, Mlp};

#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub attention: Attention,
    pub mlp: Mlp,
}

impl TransformerBlock {
    pub fn new(width: usize, head_dim: usize, expansion: usize, device: &Device) -> Self {
        Self { attention: Attention::new(width, head_dim, device), mlp: Mlp::new(width, expansion, device) }
    }

    /// Full causal sequence.
    pub fn forward(&self, x: Tensor<3>, mask: &Tensor<4, Bool>) -> Tensor<3> {
        let x = x.clone() + self.attention.forward(x, mask);
        x.clone() + self.mlp.forward(x)
    }

    /// New tokens against the KV cache.
    pub fn step(&self, x: Tensor<3>, cache: &mut KvCache, inv_temp: Option<&Tensor<4>>) -> Tensor<3> {
        let x = x.clone() + self.attention.step(x, cache, inv_temp);
        x.clone() + self.mlp.forward(x)
    }
}

//! Neural-network building blocks of a flow layer: pre-norm causal attention with a KV cache,
//! the GELU MLP, the transformer block that joins them, and the Fourier log-t embedding.

pub mod attention;
pub mod block;
pub mod mlp;
pub mod time_embed;

pub use attention::{Attention, KvCache};
pub use block::TransformerBlock;
pub use mlp::Mlp;
pub use time_embed::TimeEmbed;

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

/// LayerNorm as the reference builds it (eps 1e-5, affine).
pub fn layer_norm(width: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(width).with_epsilon(1e-5).init(device)
}

/// A Linear layer with bias, initialised like torch.nn.Linear (uniform in ±1/sqrt(fan_in)).
pub fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).init(device)
}

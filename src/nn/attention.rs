//! Pre-norm multi-head self-attention, causal over the full sequence or one token at a time with
//! a key/value cache.
//!
//! Heads follow the reference: `qkv` is Linear(C, 3C); q, k and v are the channel ranges
//! [0, C), [C, 2C) and [2C, 3C), each cut into heads of `head_dim` contiguous channels. Scores
//! are scaled by head_dim^-0.5 divided by the attention temperature.

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::{layer_norm, linear};

#[derive(Module, Debug)]
pub struct Attention {
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    pub head_dim: usize,
}

/// Keys and values of the tokens seen so far by one attention module, (B, heads, n, head_dim).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub k: Option<Tensor<4>>,
    pub v: Option<Tensor<4>>,
}

impl KvCache {
    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let k = match self.k.take() {
            Some(past) => Tensor::cat(vec![past, k], 2),
            None => k,
        };
        let v = match self.v.take() {
            Some(past) => Tensor::cat(vec![past, v], 2),
            None => v,
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        (k, v)
    }
}

/// A (1, 1, T, T) mask that is true where token i must not see token j (j > i).
pub fn causal_mask(tokens: usize, device: &Device) -> Tensor<4, Bool> {
    let data: Vec<bool> = (0..tokens * tokens).map(|n| n % tokens > n / tokens).collect();
    Tensor::<1, Bool>::from_data(TensorData::new(data, [tokens * tokens]), device).reshape([1, 1, tokens, tokens])
}

impl Attention {
    pub fn new(width: usize, head_dim: usize, device: &Device) -> Self {
        Self {
            norm: layer_norm(width, device),
            qkv: linear(width, 3 * width, device),
            proj: linear(width, width, device),
            heads: width / head_dim,
            head_dim,
        }
    }

    /// q (pre-scaled), k, v of shape (B, heads, T, head_dim) for the normalised input.
    fn qkv_heads(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let h = self.heads;
        let qkv = self.qkv.forward(self.norm.forward(x)).reshape([b, t, 3 * h, self.head_dim]).swap_dims(1, 2);
        let q = qkv.clone().narrow(1, 0, h).mul_scalar((self.head_dim as f64).powf(-0.5));
        let k = qkv.clone().narrow(1, h, h);
        let v = qkv.narrow(1, 2 * h, h);
        (q, k, v)
    }

    fn merge_heads(&self, out: Tensor<4>) -> Tensor<3> {
        let [b, h, t, d] = out.dims();
        self.proj.forward(out.swap_dims(1, 2).reshape([b, t, h * d]))
    }

    /// Causal attention over a whole sequence (B, T, C); `mask` comes from [`causal_mask`].
    pub fn forward(&self, x: Tensor<3>, mask: &Tensor<4, Bool>) -> Tensor<3> {
        let (q, k, v) = self.qkv_heads(x);
        let [b, h, t, _] = q.dims();
        let scores = q.matmul(k.swap_dims(2, 3)).mask_fill(mask.clone().expand([b, h, t, t]), f32::NEG_INFINITY);
        self.merge_heads(softmax(scores, 3).matmul(v))
    }

    /// Attention of one new token (B, 1, C) over the cached tokens and itself; appends its key
    /// and value to `cache`. `inv_temp`, shape (B, 1, 1, 1), divides each row's scores by its
    /// attention temperature.
    pub fn step(&self, x: Tensor<3>, cache: &mut KvCache, inv_temp: Option<&Tensor<4>>) -> Tensor<3> {
        debug_assert_eq!(x.dims()[1], 1, "a step takes one token");
        let (mut q, k, v) = self.qkv_heads(x);
        if let Some(s) = inv_temp {
            q = q.mul(s.clone());
        }
        let (k, v) = cache.append(k, v);
        self.merge_heads(softmax(q.matmul(k.swap_dims(2, 3)), 3).matmul(v))
    }
}

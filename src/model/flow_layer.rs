//! One autoregressive affine flow layer (the reference's MetaBlock).
//!
//! Forward, on tokens u = P(x): h = proj_in(u) + P(pos) + time + class; transformer blocks;
//! o = proj_out(h) shifted right by one token; a, b = halves of o;
//! z = (u - b) exp(-a); output P^-1(z) and logdet = -mean(a).
//! Inversion runs token by token: the network on token n (with the KV cache of tokens < n) gives
//! (a, b) of token n+1, and u_{n+1} = z_{n+1} exp(a) + b.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use crate::nn::{KvCache, TimeEmbed, TransformerBlock, attention::causal_mask, linear};

#[derive(Module, Debug)]
pub struct FlowLayer {
    pub proj_in: Linear,
    /// (T, C), in data order; permuted with the tokens.
    pub pos_embed: Param<Tensor<2>>,
    /// (K, C); the reference stores it as (K, 1, C).
    pub class_embed: Option<Param<Tensor<2>>>,
    /// The layer's own transformer blocks (the reference's `head_blocks`).
    pub blocks: Vec<TransformerBlock>,
    pub proj_out: Linear,
    pub time_embed: TimeEmbed,
    /// Token order reversed (odd layers) or kept (even layers).
    pub flip: bool,
    /// Affine (log-scale and shift) or shift only.
    pub affine: bool,
    pub token_dim: usize,
}

/// Everything a layer's network adds to every token besides the token itself: the time and class
/// embeddings, (B, C).
pub type LayerCond = Tensor<2>;

impl FlowLayer {
    /// A freshly initialised layer; `proj_out` starts at zero so the layer starts as the identity.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        token_dim: usize,
        width: usize,
        tokens: usize,
        own_blocks: usize,
        head_dim: usize,
        expansion: usize,
        num_classes: usize,
        flip: bool,
        affine: bool,
        device: &Device,
    ) -> Self {
        let normal = |shape: [usize; 2]| Param::from_tensor(Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 0.01), device));
        let out_dim = if affine { 2 * token_dim } else { token_dim };
        let mut proj_out = linear(width, out_dim, device);
        proj_out.weight = Param::from_tensor(Tensor::zeros([width, out_dim], device));
        Self {
            proj_in: linear(token_dim, width, device),
            pos_embed: normal([tokens, width]),
            class_embed: (num_classes > 0).then(|| normal([num_classes, width])),
            blocks: (0..own_blocks).map(|_| TransformerBlock::new(width, head_dim, expansion, device)).collect(),
            proj_out,
            time_embed: TimeEmbed::new(width, device),
            flip,
            affine,
            token_dim,
        }
    }

    /// Applies the layer's token permutation (its own inverse) along dimension `dim`.
    pub fn permute<const D: usize>(&self, x: Tensor<D>, dim: usize) -> Tensor<D> {
        if self.flip { x.flip([dim]) } else { x }
    }

    /// Time plus class embedding for log t (B,) and class weights (B, K) from
    /// [`crate::model::class_weights`] (ignored by an unconditional model).
    pub fn cond(&self, log_t: Tensor<1>, class_weights: Option<&Tensor<2>>) -> LayerCond {
        let t = self.time_embed.forward(log_t);
        match (&self.class_embed, class_weights) {
            (Some(table), Some(w)) => t + w.clone().matmul(table.val()),
            _ => t,
        }
    }

    /// Splits the network output (.., 2c) into log-scale a and shift b (a = 0 for a shift-only layer).
    fn split_ab<const D: usize>(&self, o: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        if self.affine {
            let c = self.token_dim;
            (o.clone().narrow(D - 1, 0, c), o.narrow(D - 1, c, c))
        } else {
            (o.zeros_like(), o)
        }
    }

    /// The network's (a, b) for every position of permuted tokens `u` (B, T, c), before the
    /// shift: entry n is computed from tokens 0..=n and applies to token n+1.
    pub fn network(&self, u: Tensor<3>, cond: &LayerCond, shared: &[TransformerBlock]) -> (Tensor<3>, Tensor<3>) {
        let [b, t, _] = u.dims();
        let pos = self.permute(self.pos_embed.val(), 0);
        let width = pos.dims()[1];
        let mut h = self.proj_in.forward(u.clone()) + pos.unsqueeze::<3>() + cond.clone().reshape([b, 1, width]);
        let mask = causal_mask(t, &u.device());
        for block in shared.iter().chain(&self.blocks) {
            h = block.forward(h, &mask);
        }
        self.split_ab(self.proj_out.forward(h))
    }

    /// Forward (data -> noise) on tokens (B, T, c) in data order: returns the layer's output in
    /// data order and its logdet (B,) = -mean(a).
    pub fn forward(&self, x: Tensor<3>, cond: &LayerCond, shared: &[TransformerBlock]) -> (Tensor<3>, Tensor<1>) {
        let [b, t, c] = x.dims();
        let u = self.permute(x, 1);
        let (a, shift) = self.network(u.clone(), cond, shared);
        // Shift right by one token: token n is transformed by the output at n - 1; token 0 by zero.
        let shift_right = |o: Tensor<3>| Tensor::cat(vec![o.zeros_like().narrow(1, 0, 1), o.narrow(1, 0, t - 1)], 1);
        let (a, shift) = (shift_right(a), shift_right(shift));
        let z = (u - shift) * a.clone().neg().exp();
        let logdet = a.mean_dims(&[1, 2]).reshape([b]).neg();
        debug_assert_eq!(z.dims(), [b, t, c]);
        (self.permute(z, 1), logdet)
    }

    /// One inversion step in the permuted order: the network on the token at position `n`
    /// (B, c), with `caches` (one per block, shared first) holding positions < n. Returns the
    /// (a, b) of position n+1, each (B, c). `inv_temp` (B, 1, 1, 1) scales attention per row.
    pub fn step(
        &self,
        token: Tensor<2>,
        n: usize,
        cond: &LayerCond,
        shared: &[TransformerBlock],
        caches: &mut [KvCache],
        inv_temp: Option<&Tensor<4>>,
    ) -> (Tensor<2>, Tensor<2>) {
        let [b, c] = token.dims();
        let tokens = self.pos_embed.dims()[0];
        let pos_index = if self.flip { tokens - 1 - n } else { n };
        let pos = self.pos_embed.val().narrow(0, pos_index, 1);
        let mut h = (self.proj_in.forward(token.reshape([b, 1, c])).reshape([b, pos.dims()[1]]) + pos + cond.clone()).unsqueeze_dim::<3>(1);
        for (block, cache) in shared.iter().chain(&self.blocks).zip(caches.iter_mut()) {
            h = block.step(h, cache, inv_temp);
        }
        let o = self.proj_out.forward(h);
        let out_dim = o.dims()[2];
        self.split_ab(o.reshape([b, out_dim]))
    }

    /// Number of transformer blocks a step runs (shared plus own), i.e. KV caches it needs.
    pub fn depth(&self, shared: &[TransformerBlock]) -> usize {
        shared.len() + self.blocks.len()
    }
}

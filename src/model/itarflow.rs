//! The whole iTARFlow model: a stack of flow layers over patch tokens, conditioned on log t and
//! the class; its forward pass, exact log-likelihood, training loss and score.
//!
//! log p(x_t | t, y) = -0.5 sum(z^2) - (D/2) ln(2 pi) + D (sum_l logdet_l + ln input_scale),
//! with logdet_l the per-layer means (hence the factor D).

use burn::prelude::*;

use super::cond::{Labels, class_weights};
use super::flow_layer::{FlowLayer, LayerCond};
use super::patch::{patchify, unpatchify};
use crate::config::{ConfigError, ModelConfig};
use crate::nn::TransformerBlock;

#[derive(Module, Debug)]
pub struct ITarFlow {
    pub layers: Vec<FlowLayer>,
    /// Blocks run by every layer before its own (empty without a shared backbone).
    pub shared_backbone: Vec<TransformerBlock>,
    /// Prior variance of the last layer's tokens, (T, c): the reference's `var` buffer.
    pub var: Tensor<2>,
    #[module(skip)]
    pub config: ModelConfig,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Final tokens (B, T, c) of the last layer.
    pub z: Tensor<3>,
    /// Each layer's output tokens, in data order.
    pub outputs: Vec<Tensor<3>>,
    /// Each layer's logdet (B,) = -mean(a).
    pub layer_logdets: Vec<Tensor<1>>,
    /// Sum of the layer logdets plus ln(input_scale), (B,): the reference's `logdets`.
    pub logdet: Tensor<1>,
}

/// Likelihood-derived quantities of a batch.
#[derive(Debug, Clone)]
pub struct Likelihood {
    /// log p(x | t, y) in nats, (B,).
    pub log_prob: Tensor<1>,
    /// Per-sample loss 0.5 mean(z^2) - logdet (before the gamma_t weighting), (B,).
    pub loss: Tensor<1>,
}

impl ITarFlow {
    /// A freshly initialised model (zero `proj_out`, so every layer starts as the identity).
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let c = config;
        let shared = (0..c.shared_backbone_blocks).map(|_| TransformerBlock::new(c.width(0), c.head_dim, c.expansion, device)).collect();
        let layers = (0..c.num_layers)
            .map(|l| {
                FlowLayer::new(
                    c.token_dim(l),
                    c.width(l),
                    c.tokens(l),
                    c.own_blocks(l),
                    c.head_dim,
                    c.expansion,
                    c.num_classes,
                    l % 2 == 1,
                    c.affine,
                    device,
                )
            })
            .collect();
        let last = c.num_layers - 1;
        Ok(Self { layers, shared_backbone: shared, var: Tensor::ones([c.tokens(last), c.token_dim(last)], device), config: c.clone() })
    }

    pub fn device(&self) -> Device {
        self.var.device()
    }

    /// Per-layer conditioning for noise levels `t` (B,) and `labels`.
    pub fn conds(&self, t: Tensor<1>, labels: &Labels) -> Vec<LayerCond> {
        let [b] = t.dims();
        let log_t = t.log();
        let weights = (self.config.num_classes > 0).then(|| class_weights(labels, b, self.config.num_classes, &log_t.device()));
        self.layers.iter().map(|layer| layer.cond(log_t.clone(), weights.as_ref())).collect()
    }

    /// Re-cuts tokens when the patch size changes from layer `from` to layer `to`.
    pub fn repatch(&self, x: Tensor<3>, from: usize, to: usize) -> Tensor<3> {
        let c = &self.config;
        if c.patch_size(from) == c.patch_size(to) {
            return x;
        }
        patchify(unpatchify(x, c.patch_size(from), c.in_channels, c.img_size), c.patch_size(to))
    }

    /// Forward pass (data -> noise) of images `x` (B, C, H, W) at noise levels `t` (B,).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, labels: &Labels) -> Forward {
        let conds = self.conds(t, labels);
        let mut h = patchify(x, self.config.patch_size(0));
        if self.config.input_scale != 1.0 {
            h = h.mul_scalar(self.config.input_scale);
        }
        let mut outputs = Vec::with_capacity(self.layers.len());
        let mut layer_logdets = Vec::with_capacity(self.layers.len());
        for (l, (layer, cond)) in self.layers.iter().zip(&conds).enumerate() {
            if l > 0 {
                h = self.repatch(h, l - 1, l);
            }
            let (out, logdet) = layer.forward(h, cond, &self.shared_backbone);
            outputs.push(out.clone());
            layer_logdets.push(logdet);
            h = out;
        }
        let mut logdet = layer_logdets.iter().skip(1).fold(layer_logdets[0].clone(), |acc, l| acc + l.clone());
        if self.config.input_scale != 1.0 {
            logdet = logdet.add_scalar(self.config.input_scale.ln());
        }
        Forward { z: h, outputs, layer_logdets, logdet }
    }

    /// log p and the per-sample loss from a forward pass.
    pub fn likelihood(&self, fwd: &Forward) -> Likelihood {
        let [b, t, c] = fwd.z.dims();
        let d = self.config.data_dim() as f64;
        let sq = fwd.z.clone().square().reshape([b, t * c]).sum_dim(1).reshape([b]);
        let log_prob = sq.clone().mul_scalar(-0.5) + fwd.logdet.clone().mul_scalar(d);
        let log_prob = log_prob.add_scalar(-0.5 * d * (2.0 * std::f64::consts::PI).ln());
        let loss = sq.mul_scalar(0.5 / (t * c) as f64) - fwd.logdet.clone();
        Likelihood { log_prob, loss }
    }

    /// log p(x | t, y) in nats, (B,).
    pub fn log_prob(&self, x: Tensor<4>, t: Tensor<1>, labels: &Labels) -> Tensor<1> {
        self.likelihood(&self.forward(x, t, labels)).log_prob
    }

    /// The score grad_x log p(x | t, y), (B, C, H, W), and log p (B,), by autodiff. The model's
    /// parameters are not differentiated; works from a model on any device.
    pub fn score(&self, x: Tensor<4>, t: Tensor<1>, labels: &Labels) -> (Tensor<4>, Tensor<1>) {
        let x = x.without_autodiff().autodiff().require_grad();
        let log_prob = self.log_prob(x.clone(), t.without_autodiff(), labels);
        let grads = log_prob.clone().sum().backward();
        let score = x.grad(&grads).expect("x requires grad, so backward gives its gradient");
        (score, log_prob.detach().without_autodiff())
    }

    /// The layers' token counts and widths, for the sampler: (T, c) of layer `l`.
    pub fn token_shape(&self, l: usize) -> (usize, usize) {
        (self.config.tokens(l), self.config.token_dim(l))
    }
}

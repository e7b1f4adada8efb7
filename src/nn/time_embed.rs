//! Conditioning on the noise level: Fourier features of s = log t, then an MLP.
//!
//! f_k = exp(-ln(10000) k / (C/2)) for k < C/2; e = [sin(s f), cos(s f)] (zero-padded to C when C
//! is odd); out = Linear(4C, C)(GELU(Linear(C, 4C)(e))).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::linear;

const MAX_PERIOD: f64 = 10000.0;

#[derive(Module, Debug)]
pub struct TimeEmbed {
    /// The reference's `mlp.0`.
    pub fc1: Linear,
    /// The reference's `mlp.2`.
    pub fc2: Linear,
    pub width: usize,
}

/// The Fourier features of `log_t` (B,), shape (B, width).
pub fn fourier_features(log_t: Tensor<1>, width: usize) -> Tensor<2> {
    let [b] = log_t.dims();
    let device = log_t.device();
    let half = width / 2;
    let s = log_t.reshape([b, 1]);
    if half == 0 {
        return s;
    }
    let freqs: Vec<f32> = (0..half).map(|k| (-(MAX_PERIOD.ln()) * k as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device).reshape([1, half]);
    let args = s.mul(freqs);
    let mut parts = vec![args.clone().sin(), args.cos()];
    if width % 2 == 1 {
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1)
}

impl TimeEmbed {
    pub fn new(width: usize, device: &Device) -> Self {
        Self { fc1: linear(width, 4 * width, device), fc2: linear(4 * width, width, device), width }
    }

    /// log t (B,) -> embedding (B, C).
    pub fn forward(&self, log_t: Tensor<1>) -> Tensor<2> {
        self.fc2.forward(gelu(self.fc1.forward(fourier_features(log_t, self.width))))
    }
}

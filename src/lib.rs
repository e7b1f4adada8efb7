//! # itarflow
//!
//! iTARFlow normalizing-flow image models in Burn: the model, its exact likelihood and score, the
//! reference two-phase sampler, and checkpoints compatible with the public PyTorch reference
//! (apple/ml-itarflow).
//!
//! - [`config`]: model shapes and presets.
//! - [`nn`]: attention with a KV cache, MLP, transformer block, Fourier time embedding.
//! - [`model`]: patches, flow layers, the whole model, log p and the score.
//! - [`sample`]: autoregressive inversion with guidance, iterative denoising.
//! - [`checkpoint`]: the project's safetensors format and import of reference checkpoints.
//! - [`classifier`]: the quality classifier (training, its directory for `itarflow-rt`).

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod deploy;
pub mod model;
pub mod nn;
pub mod sample;
pub mod train;

pub use config::ModelConfig;
pub use model::{ITarFlow, Labels};

/// The device models run and train on: Burn's Flex CPU backend, or the first CUDA GPU when the
/// crate is built with the `cuda` feature.
pub fn default_device() -> burn::prelude::Device {
    #[cfg(feature = "cuda")]
    {
        burn::prelude::Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        burn::prelude::Device::flex()
    }
}

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
//! - [`device`]: the Burn device (Flex CPU, Vulkan, CUDA) chosen once per process.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod deploy;
pub mod device;
pub mod model;
pub mod nn;
pub mod sample;
pub mod train;

pub use config::ModelConfig;
pub use model::{ITarFlow, Labels};

pub use device::{DeviceKind, default_device};

//! Burn-free pieces shared by the `itarflow` toolkit, its exporter and its runtime `itarflow-rt`:
//! the model config, named weights, numpy `.npz` arrays, PNG sample grids, seeded Gaussian noise
//! and atomic file writes.
//!
//! Both the Burn sampler and the ONNX runtime draw their noise from [`noise::GaussianNoise`], so a
//! `--seed` gives the same images whichever engine runs the model.

pub mod atomic;
pub mod check;
pub mod classifier;
pub mod config;
pub mod grid;
pub mod inputs;
pub mod manifest;
pub mod noise;
pub mod npz;
pub mod reference;
pub mod report;
#[cfg(feature = "cli")]
pub mod sample_args;
pub mod sampling;
pub mod shipped;
pub mod weights;

pub use atomic::write_atomic;
pub use classifier::ClassifierConfig;
pub use config::ModelConfig;
pub use grid::{GridError, save_grid};
pub use noise::{GaussianNoise, prior_noise, random_labels};
pub use npz::{Array, ArrayData, Npz, NpzError};
pub use weights::RawTensor;

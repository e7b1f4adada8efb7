//! Burn-free pieces shared by the `itarflow` toolkit and its runtime `itarflow-rt`:
//! numpy `.npz` arrays, PNG sample grids, seeded Gaussian noise and atomic file writes.
//!
//! Both the Burn sampler and the ONNX runtime draw their noise from [`noise::GaussianNoise`], so a
//! `--seed` gives the same images whichever engine runs the model.

pub mod atomic;
pub mod grid;
pub mod noise;
pub mod npz;

pub use atomic::write_atomic;
pub use grid::{GridError, save_grid};
pub use noise::{GaussianNoise, prior_noise, random_labels};
pub use npz::{Array, ArrayData, Npz, NpzError};

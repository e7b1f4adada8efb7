//! # itarflow-rt
//!
//! Runs exported iTARFlow model packages with no Burn, no Python and no network: loads a package
//! made by `itarflow export` (manifest and sha256 checked), and runs the two-phase sampler, the
//! score and log p on tract or ONNX Runtime (CPU, CUDA, TensorRT).
//!
//! ```no_run
//! use itarflow_rt::{Model, Provider, Sampler};
//! let model = Model::load("models/fmnist/package")?;
//! let sampler = Sampler::builder(model).provider(Provider::Auto).cfg(2.0).num_images(4).build()?;
//! eprintln!("running on {}", sampler.provider());
//! let samples = sampler.sample(&mut |_| {})?;
//! println!("{:?} {:?}", samples.images.shape(), samples.labels);
//! # Ok::<(), itarflow_rt::RtError>(())
//! ```

pub mod bench;
pub mod check;
pub mod graphs;
pub mod memory;
pub mod model;
pub mod provider;
pub mod sampler;

use thiserror::Error;

pub use graphs::{GraphSet, Loaded};
pub use model::Model;
pub use provider::{HostTensor, Precision, Provider, ProviderOptions};
pub use sampler::{Classes, OnNonFinite, Progress, Sampler, SamplerBuilder, Samples, ScoreForm, StepCache};

#[derive(Debug, Error)]
pub enum RtError {
    #[error(transparent)]
    Manifest(#[from] itarflow_base::manifest::ManifestError),
    #[error(transparent)]
    Npz(#[from] itarflow_base::NpzError),
    #[error("provider {provider}: {reason}")]
    Provider { provider: String, reason: String },
    /// A graph family failed to load (the message carries the provider's reason).
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "sample {index} is not finite (NaN or Inf) after {attempts} attempt(s): the model diverged on this noise; retry with another seed or allow retries (--retries N)"
    )]
    NonFinite { index: usize, attempts: usize },
}

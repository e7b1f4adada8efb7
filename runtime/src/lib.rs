//! # itarflow-rt
//!
//! Runs exported iTARFlow model packages with no Burn, no Python and no network: loads a package
//! made by `itarflow export` (manifest and sha256 checked), and runs the two-phase sampler, the
//! score and log p on an execution provider.
//!
//! ```no_run
//! use itarflow_rt::{Model, sampler};
//! let model = Model::load("models/fmnist/package")?;
//! let graphs = model.tract_graphs("fp32")?;
//! let settings = sampler::defaults(&model);
//! let labels = vec![0, 1, 2, 3];
//! let z = itarflow_base::prior_noise(0, 4 * 49 * 16);
//! let images = sampler::sample(&model, &graphs, &z, &labels, &settings, &mut |_| {})?;
//! # Ok::<(), itarflow_rt::RtError>(())
//! ```

pub mod model;
pub mod provider;
pub mod sampler;

use thiserror::Error;

pub use model::{Graphs, Model};
pub use provider::HostTensor;

#[derive(Debug, Error)]
pub enum RtError {
    #[error(transparent)]
    Manifest(#[from] itarflow_base::manifest::ManifestError),
    #[error(transparent)]
    Npz(#[from] itarflow_base::NpzError),
    #[error("provider {provider}: {reason}")]
    Provider { provider: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("sample {index} is not finite (NaN or Inf): the model diverged on this noise; retry with another seed")]
    NonFinite { index: usize },
}

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

pub mod allocator;
pub mod bench;
pub mod check;
pub mod graphs;
pub mod info;
pub mod memory;
pub mod model;
pub mod provider;
pub mod quality;
pub mod sampler;
#[cfg(feature = "serve")]
pub mod serve;

use thiserror::Error;

pub use graphs::{GraphSet, Loaded};
pub use model::Model;
pub use provider::{CudaGraphs, HostTensor, Precision, Provider, ProviderOptions};
pub use sampler::{Cancel, Classes, OnNonFinite, Progress, Sampler, SamplerBuilder, Samples, ScoreForm, StepCache};

#[derive(Debug, Error)]
pub enum RtError {
    #[error(transparent)]
    Manifest(Box<itarflow_base::manifest::ManifestError>),
    #[error(transparent)]
    Npz(Box<itarflow_base::NpzError>),
    #[error("provider {provider}: {reason}")]
    Provider { provider: String, reason: String },
    /// A graph family failed to load (the message carries the provider's reason).
    #[error("{0}")]
    Load(String),
    /// A sampler setting or option out of range, or an unknown name.
    #[error("{0}")]
    Setting(String),
    /// Inputs whose size or shape does not fit the model.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Labels(Box<itarflow_base::inputs::InputError>),
    /// The package lacks what is asked of it, or contradicts itself.
    #[error("{0}")]
    Package(String),
    #[error("cannot create {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// No provider could run, with each one's reason.
    #[error("no provider could run: {0}")]
    NoProvider(String),
    /// A broken invariant inside the runtime (a worker thread panicked, a lock was poisoned, an
    /// engine broke its contract): a bug to report.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "sample {index} is not finite (NaN or Inf) after {attempts} attempt(s): the model diverged on this noise (usually denoising an off-range phase-1 image at a high guidance scale); allow retries (--retries N), clip the denoiser's estimates to the data range (--clip) or use another seed"
    )]
    NonFinite { index: usize, attempts: usize },
    /// The run's [`Cancel`] flag was set: it stopped at its next step.
    #[error("the run was cancelled before it finished")]
    Cancelled,
}

impl RtError {
    /// This error with the image it names (a NonFinite sample) counted from `start`: a run over a
    /// chunk of a larger set names the image by its place in the whole set.
    pub fn in_set_from(self, start: usize) -> Self {
        match self {
            RtError::NonFinite { index, attempts } => RtError::NonFinite { index: start + index, attempts },
            other => other,
        }
    }
}

// The foreign errors are boxed: they carry paths and texts, and an RtError is returned by value
// from every call.
impl From<itarflow_base::manifest::ManifestError> for RtError {
    fn from(e: itarflow_base::manifest::ManifestError) -> Self {
        RtError::Manifest(Box::new(e))
    }
}

impl From<itarflow_base::NpzError> for RtError {
    fn from(e: itarflow_base::NpzError) -> Self {
        RtError::Npz(Box::new(e))
    }
}

impl From<itarflow_base::inputs::InputError> for RtError {
    fn from(e: itarflow_base::inputs::InputError) -> Self {
        RtError::Labels(Box::new(e))
    }
}

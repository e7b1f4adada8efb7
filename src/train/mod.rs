//! Training: the paper's multi-noise objective with AdamW, a cosine schedule with warm-up,
//! gradient clipping, optional EMA of the weights, checkpoints that resume bit-exactly, metrics
//! and sample grids.

pub mod config;
pub mod ema;
pub mod metrics;
pub mod nll;
pub mod run;
pub mod schedule;
pub mod state;
pub mod trainer;

use thiserror::Error;

pub use config::TrainConfig;
pub use run::{Event, Limits, Summary, run};
pub use trainer::{StepGradients, StepReport, Trainer, default_workers};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("training state {path}: {reason}")]
    State { path: std::path::PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Grid(#[from] itarflow_base::GridError),
    #[error("the loss was not finite for {count} steps in a row (last at step {step}); lower --lr or raise --warmup")]
    Diverged { step: u64, count: u32 },
    #[error("{0}")]
    Invalid(String),
}

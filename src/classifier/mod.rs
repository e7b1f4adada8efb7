//! The quality classifier: a LeNet-style CNN trained on the dataset (here, in Burn), written as a
//! directory that `itarflow-rt` evaluates samples with, without Burn or the dataset:
//! `classifier.safetensors` (weights, PyTorch names, config in the metadata), `classifier.onnx`
//! (its graph, through `itarflow-export`), `reference.npz` (the test set's feature statistics),
//! `card.json` (test accuracy, the FLD floors, how it was trained).

pub mod build;
pub mod model;
pub mod train;
pub mod weights;

use std::path::PathBuf;

use thiserror::Error;

pub use build::{BuildReport, write_directory};
pub use model::LeNet;
pub use train::{ClassifierTraining, Event, accuracy, train};

#[derive(Debug, Error)]
pub enum ClassifierError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Export(#[from] itarflow_export::ExportError),
    #[error(transparent)]
    Runtime(#[from] itarflow_rt::RtError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

//! Checkpoints: the project's own format (safetensors with the reference's names and layouts plus
//! the config in the metadata, written atomically) and import of reference PyTorch checkpoints
//! (.pth state_dict or .safetensors), with the config inferred from tensor shapes.

pub mod infer;
pub mod names;
pub mod native;
pub mod tensors;

use std::path::PathBuf;

use thiserror::Error;

pub use infer::{ImportOptions, infer_config};
pub use native::{LoadedModel, Precision, load, read_config, save, save_as};
pub use tensors::{NamedTensors, RawTensor};

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint {path} has no tensor '{name}' (expected shape {expected:?}); is it an iTARFlow checkpoint of this shape?")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },
    #[error("checkpoint {path}: tensor '{name}' has shape {found:?}, but the model needs {expected:?}")]
    TensorShape { path: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error(
        "checkpoint {path} has {count} tensor(s) the model does not use, e.g. '{name}' {shape:?}; the config does not match the checkpoint"
    )]
    UnexpectedTensor { path: PathBuf, name: String, shape: Vec<usize>, count: usize },
    #[error("checkpoint {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot write checkpoint {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

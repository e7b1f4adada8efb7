//! # itarflow-export
//!
//! Turns an iTARFlow model (config plus weights under the reference's names) into a model
//! package that ONNX Runtime and tract run with no Burn and no Python: per-layer full-sequence
//! forward graphs, per-layer conditioning and KV-cached inverse-step graphs, and a score graph
//! holding the explicit gradient of log p, plus a manifest.
//!
//! Layers: [`proto`] (protobuf wire format) -> [`ir`] (typed graph, reverse-mode gradients,
//! simplification) with [`ops`] (one file per op family: shape rule, ONNX lowering, adjoint) ->
//! [`onnx`] (lowering to ONNX) -> [`model`] (the iTARFlow graphs) -> [`package`] (files and
//! manifest). [`classifier`]: the quality classifier's graph.

pub mod classifier;
pub mod half;
pub mod ir;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod package;
pub mod proto;
pub mod store;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("weights do not match the config: {0}")]
    Weights(String),
    #[error("cannot write {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Npz(#[from] itarflow_base::NpzError),
    #[error("{0}")]
    Invalid(String),
    #[error("check failed: {0}")]
    Check(String),
}

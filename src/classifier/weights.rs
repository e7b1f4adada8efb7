//! `classifier.safetensors`: the classifier's weights under PyTorch names, f32, with its config
//! as JSON in the metadata.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use burn::prelude::*;
use itarflow_base::ClassifierConfig;

use super::{ClassifierError, LeNet};
use crate::checkpoint::CheckpointError;
use crate::checkpoint::tensors::NamedTensors;

/// Metadata key of the config JSON.
pub const CONFIG_KEY: &str = "itarflow.classifier";

/// Writes `model` (of shape `config`) to `path`, atomically.
pub fn save(model: &LeNet, config: &ClassifierConfig, path: &Path) -> Result<(), ClassifierError> {
    let err = |reason: String| ClassifierError::Checkpoint(CheckpointError::Write { path: path.into(), reason });
    let named = model.to_named();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        named.into_iter().map(|(n, t)| (n, t.shape, t.data.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views = bytes
        .iter()
        .map(|(n, s, d)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let json = serde_json::to_string(config).map_err(|e| err(e.to_string()))?;
    let blob = safetensors::serialize(views, Some(HashMap::from([(CONFIG_KEY.to_string(), json)]))).map_err(|e| err(e.to_string()))?;
    itarflow_base::write_atomic(path, |w| w.write_all(&blob)).map_err(|e| err(e.to_string()))
}

/// Reads a classifier written by [`save`].
pub fn load(path: &Path, device: &Device) -> Result<(ClassifierConfig, LeNet), ClassifierError> {
    let src = NamedTensors::read(path)?;
    let config_err = |reason: String| ClassifierError::Checkpoint(CheckpointError::Config { path: path.into(), reason });
    let json = src
        .metadata
        .get(CONFIG_KEY)
        .ok_or_else(|| config_err(format!("no '{CONFIG_KEY}' metadata: not a classifier written by `itarflow train-classifier`")))?;
    let config: ClassifierConfig = serde_json::from_str(json).map_err(|e| config_err(format!("the stored config is not valid: {e}")))?;
    config.validate().map_err(config_err)?;
    let model = LeNet::from_named(&config, &src.tensors, device).map_err(config_err)?;
    Ok((config, model))
}

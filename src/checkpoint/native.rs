//! The project's checkpoint format: a safetensors file holding the reference's tensor names and
//! layouts (so the reference can load it) and, in its metadata, the model config as JSON.
//! Loading accepts this format and reference checkpoints alike.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use burn::prelude::*;

use super::CheckpointError;
use super::infer::{ImportOptions, infer_config};
use super::names::{from_named, to_named};
use super::tensors::NamedTensors;
use crate::config::ModelConfig;
use crate::model::ITarFlow;

/// Metadata key holding the config JSON.
pub const CONFIG_KEY: &str = "itarflow.config";
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "itarflow";

/// Storage precision of a checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Precision {
    Fp32,
    /// IEEE half: half the size; loading converts back to f32.
    Fp16,
}

/// Writes `model` to `path` atomically, in f32.
pub fn save(model: &ITarFlow, path: &Path) -> Result<(), CheckpointError> {
    save_as(model, path, Precision::Fp32)
}

/// Writes `model` to `path` atomically, in the given precision.
pub fn save_as(model: &ITarFlow, path: &Path, precision: Precision) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Write { path: path.into(), reason };
    let named = to_named(model);
    let encode = |data: &[f32]| -> Vec<u8> {
        match precision {
            Precision::Fp32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Precision::Fp16 => data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        }
    };
    let dtype = match precision {
        Precision::Fp32 => safetensors::Dtype::F32,
        Precision::Fp16 => safetensors::Dtype::F16,
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named.into_iter().map(|(name, t)| (name, t.shape, encode(&t.data))).collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), data).map(|v| (name.clone(), v)).map_err(|e| err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = serde_json::to_string(&model.config).map_err(|e| err(e.to_string()))?;
    let metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT.to_string()),
        (CONFIG_KEY.to_string(), config),
        ("itarflow.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]);
    let blob = safetensors::serialize(views, Some(metadata)).map_err(|e| err(e.to_string()))?;
    itarflow_base::write_atomic(path, |w| w.write_all(&blob)).map_err(|e| err(e.to_string()))
}

/// A loaded model and how its config was obtained.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: ITarFlow,
    /// True when the config came from the file, false when inferred from shapes and options.
    pub config_from_file: bool,
}

/// Loads a checkpoint of either format. Options fill what shapes cannot tell (for files without
/// a config) and must agree with a stored config.
pub fn load(path: &Path, opts: &ImportOptions, device: &Device) -> Result<LoadedModel, CheckpointError> {
    let src = NamedTensors::read(path)?;
    let (config, from_file) = config_of(&src, opts)?;
    let model = from_named(&src, &config, device)?;
    Ok(LoadedModel { model, config_from_file: from_file })
}

/// The model config of the checkpoint at `path` (stored, or inferred from its tensors as `load`
/// does), without building the model.
pub fn read_config(path: &Path, opts: &ImportOptions) -> Result<ModelConfig, CheckpointError> {
    Ok(config_of(&NamedTensors::read(path)?, opts)?.0)
}

/// `src`'s config, and whether it was stored in the file (else inferred from the shapes).
fn config_of(src: &NamedTensors, opts: &ImportOptions) -> Result<(ModelConfig, bool), CheckpointError> {
    let path = &src.path;
    match src.metadata.get(CONFIG_KEY) {
        Some(json) => {
            let config: ModelConfig = serde_json::from_str(json)
                .map_err(|e| CheckpointError::Config { path: path.clone(), reason: format!("stored config is not valid: {e}") })?;
            check_agrees(path, &config, opts)?;
            Ok((config, true))
        }
        None => Ok((infer_config(src, opts)?, false)),
    }
}

fn check_agrees(path: &Path, c: &ModelConfig, opts: &ImportOptions) -> Result<(), CheckpointError> {
    let mismatch = |flag: &str, given: String, stored: String| {
        Err(CheckpointError::Config {
            path: path.into(),
            reason: format!("{flag} {given} contradicts the stored config ({stored}); drop the flag"),
        })
    };
    if let Some(ch) = opts.in_channels.filter(|&ch| ch != c.in_channels) {
        return mismatch("--in-channels", ch.to_string(), c.in_channels.to_string());
    }
    if let Some(s) = opts.img_size.filter(|&s| s != c.img_size) {
        return mismatch("--img-size", s.to_string(), c.img_size.to_string());
    }
    if let Some(h) = opts.head_dim.filter(|&h| h != c.head_dim) {
        return mismatch("--head-dim", h.to_string(), c.head_dim.to_string());
    }
    Ok(())
}

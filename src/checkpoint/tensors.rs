//! Named tensors read from a checkpoint file (.pth state_dict or .safetensors), converted to f32,
//! in the reference's (PyTorch) layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::CheckpointError;

pub use itarflow_base::RawTensor;

/// The tensors of a checkpoint by name, plus the file's string metadata (safetensors only).
#[derive(Debug, Clone, Default)]
pub struct NamedTensors {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, RawTensor>,
    pub metadata: BTreeMap<String, String>,
}

fn convert(bytes: &[u8], dtype: &str) -> Option<Vec<f32>> {
    Some(match dtype {
        "f32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        "f64" => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        "f16" => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "bf16" => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

impl NamedTensors {
    /// Reads `path` by its extension: `.safetensors`, or `.pth`/`.pt`/`.bin`/`.ckpt` (a torch
    /// state_dict, possibly nested under `model`/`state_dict`/`ema`).
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(CheckpointError::Io { path: path.into(), source });
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Self::read_safetensors(path),
            _ => Self::read_torch(path),
        }
    }

    fn read_safetensors(path: &Path) -> Result<Self, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let metadata = meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => "f32",
                safetensors::Dtype::F64 => "f64",
                safetensors::Dtype::F16 => "f16",
                safetensors::Dtype::BF16 => "bf16",
                other => {
                    // Integer buffers (e.g. step counters) carry no model weights.
                    if matches!(other, safetensors::Dtype::I64 | safetensors::Dtype::I32 | safetensors::Dtype::BOOL) {
                        continue;
                    }
                    return Err(corrupt(format!("tensor '{name}' has unsupported dtype {other:?}")));
                }
            };
            let data = convert(view.data(), dtype).expect("dtype is one of the converted ones");
            tensors.insert(name, RawTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Self { path: path.into(), tensors, metadata })
    }

    fn read_torch(path: &Path) -> Result<Self, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
        let mut reader = pytorch_reader::PytorchReader::new(path).map_err(|e| corrupt(e.to_string()))?;
        // Training checkpoints often nest the weights; take the first nesting that holds them.
        if !reader.keys().iter().any(|k| k.starts_with("blocks.")) {
            for key in ["model", "state_dict", "ema", "model_ema"] {
                if let Ok(nested) = pytorch_reader::PytorchReader::with_top_level_key(path, key)
                    && nested.keys().iter().any(|k| k.starts_with("blocks."))
                {
                    reader = nested;
                    break;
                }
            }
        }
        let mut tensors = BTreeMap::new();
        for (name, tensor) in reader.into_tensors() {
            use pytorch_reader::DType as T;
            let dtype = match tensor.dtype() {
                T::F32 => "f32",
                T::F64 => "f64",
                T::F16 => "f16",
                T::BF16 => "bf16",
                _ => continue,
            };
            let bytes = tensor.read().map_err(|e| corrupt(e.to_string()))?;
            let data = convert(&bytes, dtype).expect("dtype is one of the converted ones");
            tensors.insert(name, RawTensor { shape: tensor.shape().to_vec(), data });
        }
        Ok(Self { path: path.into(), tensors, metadata: BTreeMap::new() })
    }
}

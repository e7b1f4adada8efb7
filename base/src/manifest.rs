//! `manifest.json` of a model package: what the exporter writes and the runtime reads.
//!
//! It names every graph with its inputs and outputs (names, dtypes, dims: a number or a symbol
//! such as "N" for the batch and "P" for the cached tokens), the model config, the sampler's
//! defaults, and a sha256 per file so that a missing or altered file is caught at load time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ModelConfig;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "itarflow-package";
/// 2 added the fixed-cache step graphs, the per-layer VJP graphs, the reference outputs and
/// weight files shared between graphs; 3 the loop graphs (fused inversion steps, guided and not,
/// and the denoising step), whose fp16 variants hold their KV caches in fp16.
pub const FORMAT_VERSION: u32 = 4;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source} (is {} a model package made by `itarflow export`?)", path.parent().map(|d| d.display().to_string()).unwrap_or_default())]
    NotAPackage { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid manifest: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(
        "{path} is a package of format '{format}' version {version}; this build reads '{FORMAT}' up to version {FORMAT_VERSION}: update itarflow-rt or re-export the package"
    )]
    Format { path: PathBuf, format: String, version: u32 },
    #[error("package file {file} is missing from {dir}; re-export the package")]
    MissingFile { dir: PathBuf, file: String },
    #[error(
        "package file {file} in {dir} has sha256 {found}, but the manifest records {expected}: the file was altered or truncated; re-export the package"
    )]
    Checksum { dir: PathBuf, file: String, found: String, expected: String },
}

/// One input or output of a graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Each dim is a number or a symbol ("N", "P").
    pub shape: Vec<serde_json::Value>,
}

/// What a graph computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphKind {
    /// Full-sequence forward of one layer: (x, t, y) -> (z, logdet).
    Forward,
    /// Conditioning of one layer: (t, y) -> cond.
    Cond,
    /// One KV-cached inversion step of one layer, growing cache: past (N, H, P, d).
    Step,
    /// One inversion step with a fixed-length cache (N, H, T, d) written at `pos` (static shapes
    /// but the batch, for TensorRT).
    StepFixed,
    /// Vector-Jacobian product of one layer, its forward recomputed inside:
    /// (x, t, y, g_z, g_logdet) -> g_x.
    LayerVjp,
    /// The whole model's score and log p: (x, t, y) -> (score, logp).
    Score,
    /// One fused inversion step of one layer, a loop body: (cond, seq, pos, past K/V) ->
    /// (seq, pos + 1, present K/V), the next token written into seq (fixed-length cache).
    Invert,
    /// The same for a guided layer with the 'tarflow' guidance: the unconditional branch's
    /// cond_u and inv_temp_u and cfg_w (per step) before the state; both branches' caches
    /// (2, N, H, T, d). (Packages of format 3 took a `starflow` scalar too, both styles in one
    /// graph.)
    InvertGuided,
    /// The same with the 'starflow' guidance (one graph per style: the style's arithmetic is
    /// ~15% of a guided step's kernels, and a graph computing both styles ran both).
    InvertGuidedStarflow,
    /// One Euler step of phase 2 with the score inside, a loop body:
    /// (levels, y, clip, x, step) -> (x', step + 1).
    DenoiseStep,
}

impl GraphKind {
    /// Every kind, in the order packages list them.
    pub const ALL: [GraphKind; 10] = [
        GraphKind::Forward,
        GraphKind::Cond,
        GraphKind::Step,
        GraphKind::StepFixed,
        GraphKind::LayerVjp,
        GraphKind::Invert,
        GraphKind::InvertGuided,
        GraphKind::InvertGuidedStarflow,
        GraphKind::Score,
        GraphKind::DenoiseStep,
    ];

    /// Whether a package holds one graph of this kind per flow layer (else one for the model).
    pub fn per_layer(self) -> bool {
        !matches!(self, GraphKind::Score | GraphKind::DenoiseStep)
    }

    /// Whether the graph is a loop body: its outputs are, in order, its next run's state, which
    /// is its last `outputs.len()` inputs; the inputs before them stay fixed over the loop.
    pub fn is_loop(self) -> bool {
        matches!(self, GraphKind::Invert | GraphKind::InvertGuided | GraphKind::InvertGuidedStarflow | GraphKind::DenoiseStep)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub name: String,
    pub kind: GraphKind,
    /// Flow layer (absent for whole-model graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// "fp32" or "fp16".
    pub precision: String,
    pub file: String,
    /// Weight data files the graph refers to (ONNX external data), relative to the package.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub external_data: Vec<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A file name or a list of them (format 1 recorded one optional file per graph).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

/// Sampling defaults the package ships with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerDefaults {
    pub t_max: f64,
    pub t_min: f64,
    pub cfg: f64,
    pub cfg_style: String,
    /// Guided layers in sampling order (0 = none; a large number = all).
    pub guide_layers: usize,
    pub annealed: bool,
    pub denoise_steps: usize,
}

/// Transformer geometry the runtime needs for the KV caches, per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub tokens: usize,
    pub token_dim: usize,
    pub width: usize,
    /// Transformer blocks a step runs (shared and own): one KV cache pair each.
    pub blocks: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Token order reversed in this layer.
    pub flip: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub producer: String,
    pub model: ModelConfig,
    pub layers: Vec<LayerInfo>,
    pub sampler: SamplerDefaults,
    pub opset: i64,
    /// File of the prior variance `var` (T, c) of the last layer's tokens (npz).
    pub prior_file: String,
    /// npz of inputs and outputs computed by the exporting framework (Burn) for every graph
    /// kind, which `itarflow-rt check` compares each provider against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_file: Option<String>,
    pub graphs: Vec<GraphEntry>,
    /// sha256 (hex) of every file in the package but the manifest, by relative path.
    pub files: BTreeMap<String, String>,
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Manifest {
    /// Reads `dir/manifest.json` (without checking files).
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::NotAPackage { path: path.clone(), source })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|source| ManifestError::Json { path: path.clone(), source })?;
        if m.format != FORMAT || m.format_version > FORMAT_VERSION {
            return Err(ManifestError::Format { path, format: m.format, version: m.format_version });
        }
        Ok(m)
    }

    /// Checks that every listed file exists with its recorded sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for (file, expected) in &self.files {
            let path = dir.join(file);
            if !path.exists() {
                return Err(ManifestError::MissingFile { dir: dir.into(), file: file.clone() });
            }
            let found = sha256_file(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?;
            if &found != expected {
                return Err(ManifestError::Checksum { dir: dir.into(), file: file.clone(), found, expected: expected.clone() });
            }
        }
        Ok(())
    }

    /// The graph of `kind` for `layer` (None for whole-model graphs) at `precision`.
    pub fn graph(&self, kind: GraphKind, layer: Option<usize>, precision: &str) -> Option<&GraphEntry> {
        self.graphs.iter().find(|g| g.kind == kind && g.layer == layer && g.precision == precision)
    }
}

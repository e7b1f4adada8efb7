//! What a package holds, for `itarflow-rt info` and for applications that list packages: its
//! format, the model's shape and parameter count, the sampler's defaults, its graphs by
//! precision with their bytes on disk, the precisions it can run with, and the names a server
//! gives its models. Made from a [`Model`], so every file has been checked against its sha256.

use std::collections::{BTreeMap, BTreeSet};

use itarflow_base::config::ModelConfig;
use itarflow_base::manifest::SamplerDefaults;
use serde::Serialize;

use crate::RtError;
use crate::model::{Model, SERVED_MODEL_SUFFIXES};

/// A package's contents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageInfo {
    pub dir: String,
    pub format_version: u32,
    pub producer: String,
    pub opset: i64,
    /// Files listed in the manifest (all checked against their sha256) and their bytes, the
    /// manifest included.
    pub files: usize,
    pub bytes: u64,
    pub model: ModelConfig,
    pub parameters: usize,
    /// Tokens per flow layer (each layer's autoregressive steps).
    pub tokens: usize,
    pub sampler: SamplerDefaults,
    /// Graphs and the bytes of their files and weights, by precision.
    pub graphs: BTreeMap<String, GraphFiles>,
    /// What `--precision` may be: each precision with graphs, and `mixed` with both.
    pub precisions: Vec<String>,
    /// The models `itarflow-rt serve` makes of it (without `--name`).
    pub served_as: Vec<String>,
}

/// The graphs of one precision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GraphFiles {
    pub graphs: usize,
    /// Bytes of the graph files and of the weight files they read (each file once).
    pub bytes: u64,
}

fn size(model: &Model, file: &str) -> Result<u64, RtError> {
    let path = model.dir.join(file);
    std::fs::metadata(&path).map(|m| m.len()).map_err(|source| RtError::Io { path, source })
}

impl PackageInfo {
    pub fn of(model: &Model) -> Result<Self, RtError> {
        let m = &model.manifest;
        let mut bytes = size(model, itarflow_base::manifest::MANIFEST_FILE)?;
        for file in m.files.keys() {
            bytes += size(model, file)?;
        }
        let mut files_of: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        let mut graphs: BTreeMap<String, GraphFiles> = BTreeMap::new();
        for g in &m.graphs {
            graphs.entry(g.precision.clone()).or_default().graphs += 1;
            let files = files_of.entry(g.precision.clone()).or_default();
            files.insert(&g.file);
            files.extend(g.external_data.iter().map(String::as_str));
        }
        for (precision, files) in files_of {
            let entry = graphs.entry(precision).or_default();
            for f in files {
                entry.bytes += size(model, f)?;
            }
        }
        let mut precisions: Vec<String> = graphs.keys().cloned().collect();
        if graphs.contains_key("fp32") && graphs.contains_key("fp16") {
            precisions.push("mixed".into());
        }
        let name = model.default_name();
        Ok(Self {
            dir: std::fs::canonicalize(&model.dir).unwrap_or_else(|_| model.dir.clone()).display().to_string(),
            format_version: m.format_version,
            producer: m.producer.clone(),
            opset: m.opset,
            files: m.files.len() + 1,
            bytes,
            model: m.model.clone(),
            parameters: m.model.num_params(),
            tokens: m.layers.first().map_or(0, |l| l.tokens),
            sampler: m.sampler.clone(),
            graphs,
            precisions,
            served_as: SERVED_MODEL_SUFFIXES.iter().map(|suffix| format!("{name}{suffix}")).collect(),
        })
    }
}

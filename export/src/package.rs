//! Writing a model package: every graph of every precision, the prior variance and
//! `manifest.json`, built in a temporary directory and renamed into place.

use std::collections::BTreeMap;
use std::path::Path;

use itarflow_base::manifest::{
    FORMAT, FORMAT_VERSION, GraphEntry, GraphKind, LayerInfo, MANIFEST_FILE, Manifest, SamplerDefaults, TensorSpec, sha256_file,
};
use itarflow_base::{Array, ModelConfig, Npz, RawTensor};

use crate::ExportError;
use crate::ir::optimize::Passes;
use crate::ir::{Dim, Graph};
use crate::model::layer::GuidedStyle;
use crate::model::{Weights, graphs};
use crate::onnx::{self, ExternalData};
use crate::store::WeightStore;

/// Graph precisions to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precisions {
    Fp32,
    Fp16,
    Both,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub precisions: Precisions,
    pub opset: i64,
    /// Weights stored once in shared data files (`layer{l}.weights`, `model.weights`) that
    /// every graph refers to (the default), or inside each graph (`false`: self-contained files,
    /// several times larger in all; graphs whose weights approach protobuf's 2 GB limit still
    /// move them to a data file of their own).
    pub shared_weights: bool,
    /// Initializers of at least this many bytes go to data files (default: 1 KiB when shared,
    /// else only past the 2 GB limit).
    pub external_min_bytes: Option<usize>,
    pub sampler: SamplerDefaults,
    /// Inputs and outputs of every graph kind computed by the exporting framework, written to
    /// `reference.npz` for `itarflow-rt check` (names as in `itarflow_base::reference`).
    pub reference: Vec<(String, Array)>,
    /// Optimisation passes run on every graph (all by default).
    pub passes: Passes,
}

impl ExportOptions {
    /// Defaults for a model: fp32, opset 18, the model's noise range, no guidance, 10 denoising
    /// steps.
    pub fn for_model(c: &ModelConfig) -> Self {
        Self {
            precisions: Precisions::Fp32,
            opset: onnx::DEFAULT_OPSET,
            shared_weights: true,
            external_min_bytes: None,
            sampler: SamplerDefaults {
                t_max: c.t_max,
                t_min: c.t_min,
                cfg: 0.0,
                cfg_style: "tarflow".into(),
                guide_layers: 1,
                annealed: false,
                denoise_steps: 10,
            },
            reference: Vec::new(),
            passes: Passes::ALL,
        }
    }
}

/// Graphs above this many bytes of weights move them to external data (protobuf's limit is 2 GiB).
const AUTO_EXTERNAL_BYTES: usize = 1 << 30;
/// Smallest initializer written to a shared data file (smaller ones stay in the graph).
const SHARED_MIN_BYTES: usize = 1024;

fn spec(g: &Graph, v: crate::ir::V) -> TensorSpec {
    let val = g.value(v);
    TensorSpec {
        name: val.name.clone(),
        dtype: val.dtype.name().to_string(),
        shape: val
            .shape
            .iter()
            .map(|d| match d {
                Dim::N(n) => serde_json::json!(n),
                Dim::S(s) => serde_json::json!(s),
            })
            .collect(),
    }
}

fn weight_bytes(g: &Graph) -> usize {
    g.nodes
        .iter()
        .map(|n| match &n.op {
            crate::ir::Op::Const(crate::ir::ConstData::F32(d)) => d.len() * 4,
            crate::ir::Op::Const(crate::ir::ConstData::F16(d)) => d.len() * 2,
            _ => 0,
        })
        .sum()
}

/// Exports the model into the package directory `out` (replaced if it exists).
pub fn export(
    config: &ModelConfig,
    weights: &BTreeMap<String, RawTensor>,
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, ExportError> {
    config.validate().map_err(|e| ExportError::Invalid(e.to_string()))?;
    let w = Weights::new(config, weights);
    let werr = |p: &Path, source: std::io::Error| ExportError::Write { path: p.into(), source };
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| werr(&tmp, e))?;
    }
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| werr(&tmp, e))?;
        let precisions: &[&str] = match opts.precisions {
            Precisions::Fp32 => &["fp32"],
            Precisions::Fp16 => &["fp16"],
            Precisions::Both => &["fp32", "fp16"],
        };
        let mut builders: Vec<(GraphKind, Option<usize>)> = Vec::new();
        for l in 0..config.num_layers {
            builders.push((GraphKind::Forward, Some(l)));
            builders.push((GraphKind::Cond, Some(l)));
            builders.push((GraphKind::Step, Some(l)));
            builders.push((GraphKind::StepFixed, Some(l)));
            builders.push((GraphKind::LayerVjp, Some(l)));
            builders.push((GraphKind::Invert, Some(l)));
            if config.num_classes > 0 {
                builders.push((GraphKind::InvertGuided, Some(l)));
                builders.push((GraphKind::InvertGuidedStarflow, Some(l)));
            }
        }
        builders.push((GraphKind::Score, None));
        builders.push((GraphKind::DenoiseStep, None));
        // Each graph is built once and written at every precision (fp16 converted from it).
        let mut stores: Vec<Option<WeightStore>> = Vec::new();
        for &precision in precisions {
            let pdir = tmp.join(precision);
            std::fs::create_dir_all(&pdir).map_err(|e| werr(&tmp, e))?;
            stores.push(opts.shared_weights.then(|| WeightStore::new(&pdir, opts.external_min_bytes.unwrap_or(SHARED_MIN_BYTES))));
        }
        let mut by_precision: Vec<Vec<GraphEntry>> = vec![Vec::new(); precisions.len()];
        for &(kind, layer) in &builders {
            let built = match (kind, layer) {
                (GraphKind::Forward, Some(l)) => graphs::forward(&w, l)?,
                (GraphKind::Cond, Some(l)) => graphs::cond(&w, l)?,
                (GraphKind::Step, Some(l)) => graphs::step(&w, l, false)?,
                (GraphKind::StepFixed, Some(l)) => graphs::step(&w, l, true)?,
                (GraphKind::LayerVjp, Some(l)) => graphs::layer_vjp(&w, l)?,
                (GraphKind::Invert, Some(l)) => graphs::invert(&w, l, None)?,
                (GraphKind::InvertGuided, Some(l)) => graphs::invert(&w, l, Some(GuidedStyle::Tarflow))?,
                (GraphKind::InvertGuidedStarflow, Some(l)) => graphs::invert(&w, l, Some(GuidedStyle::Starflow))?,
                (GraphKind::DenoiseStep, None) => graphs::denoise_step(&w)?,
                _ => graphs::score(&w)?,
            };
            let built = opts.passes.run(&built);
            built.check().map_err(ExportError::Invalid)?;
            progress(&built.name);
            for (k, &precision) in precisions.iter().enumerate() {
                let half;
                let g = if precision == "fp16" {
                    // The fused steps' KV caches stay fp16 between runs.
                    let cache_io = |name: &str| name.starts_with("past_") || name.starts_with("present_");
                    half = if kind.is_loop() { crate::half::to_half_io(&built, &cache_io) } else { crate::half::to_half(&built) };
                    &half
                } else {
                    &built
                };
                let file = format!("{precision}/{}.onnx", g.name);
                let external_data = match &mut stores[k] {
                    Some(store) => {
                        onnx::save_shared(g, &tmp.join(&file), opts.opset, store)?;
                        store.take_used().into_iter().map(|f| format!("{precision}/{f}")).collect()
                    }
                    None => {
                        let min_bytes =
                            opts.external_min_bytes.or_else(|| (weight_bytes(g) > AUTO_EXTERNAL_BYTES).then_some(SHARED_MIN_BYTES));
                        let external = min_bytes.map(|m| ExternalData { location: format!("{}.weights", g.name), min_bytes: m });
                        onnx::save(g, &tmp.join(&file), opts.opset, external.as_ref())?;
                        external.map(|e| format!("{precision}/{}", e.location)).filter(|f| tmp.join(f).exists()).into_iter().collect()
                    }
                };
                by_precision[k].push(GraphEntry {
                    name: g.name.clone(),
                    kind,
                    layer,
                    precision: precision.to_string(),
                    file,
                    external_data,
                    inputs: g.inputs.iter().map(|&v| spec(g, v)).collect(),
                    outputs: g.outputs.iter().map(|&v| spec(g, v)).collect(),
                });
            }
        }
        for (store, precision) in stores.into_iter().zip(precisions) {
            if let Some(store) = store {
                store.finish().map_err(|e| werr(&tmp.join(precision), e))?;
            }
        }
        let entries: Vec<GraphEntry> = by_precision.into_iter().flatten().collect();
        let last = config.num_layers - 1;
        let var = w.get("var", &[config.tokens(last), config.token_dim(last)])?;
        let prior_file = "prior.npz".to_string();
        let mut prior = Npz::new(tmp.join(&prior_file));
        prior.insert("var", Array::f32(&[config.tokens(last), config.token_dim(last)], var.to_vec()));
        prior.write()?;

        let reference_file = (!opts.reference.is_empty()).then(|| "reference.npz".to_string());
        if let Some(f) = &reference_file {
            let mut npz = Npz::new(tmp.join(f));
            for (name, array) in &opts.reference {
                npz.insert(name, array.clone());
            }
            npz.write()?;
        }
        let mut files = BTreeMap::new();
        let mut listed: Vec<String> = entries.iter().map(|e| e.file.clone()).collect();
        let data_files: std::collections::BTreeSet<String> = entries.iter().flat_map(|e| e.external_data.iter().cloned()).collect();
        listed.extend(data_files);
        listed.push(prior_file.clone());
        listed.extend(reference_file.clone());
        for f in listed {
            let sum = sha256_file(&tmp.join(&f)).map_err(|e| werr(&tmp.join(&f), e))?;
            files.insert(f, sum);
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            producer: format!("itarflow-export {}", env!("CARGO_PKG_VERSION")),
            model: config.clone(),
            layers: (0..config.num_layers)
                .map(|l| LayerInfo {
                    tokens: config.tokens(l),
                    token_dim: config.token_dim(l),
                    width: config.width(l),
                    blocks: config.shared_backbone_blocks + config.own_blocks(l),
                    heads: config.heads(l),
                    head_dim: config.head_dim,
                    flip: l % 2 == 1,
                })
                .collect(),
            sampler: opts.sampler.clone(),
            opset: opts.opset,
            prior_file,
            reference_file,
            graphs: entries,
            files,
        };
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| ExportError::Invalid(e.to_string()))?;
        let mpath = tmp.join(MANIFEST_FILE);
        itarflow_base::write_atomic(&mpath, |wr| std::io::Write::write_all(wr, json.as_bytes())).map_err(|e| werr(&mpath, e))?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    itarflow_base::atomic::replace_dir(&tmp, out).map_err(|e| werr(out, e))?;
    Ok(manifest)
}

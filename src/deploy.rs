//! From the Burn model to a model package, and the check of every exported graph (run by tract)
//! against the Burn model on random and given inputs.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use itarflow_base::RawTensor;
use itarflow_base::manifest::{GraphKind, Manifest};
use itarflow_rt::HostTensor as Feed;
use itarflow_rt::provider::ort::{OrtDevice, OrtGraph};
use itarflow_rt::provider::tract::TractGraph;
use itarflow_rt::provider::{Engine, run_host};
use serde::Serialize;

use crate::checkpoint::names::to_named;
use crate::model::{ITarFlow, Labels};
use crate::nn::KvCache;

/// The model's weights under the reference's names, as the exporter takes them.
pub fn weights(model: &ITarFlow) -> BTreeMap<String, RawTensor> {
    to_named(model).into_iter().collect()
}

/// One compared output of one graph.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub graph: String,
    pub precision: String,
    pub engine: String,
    pub output: String,
    pub max_abs: f64,
    /// max |ours - burn| / max |burn| (for the score: relative to the score's largest entry).
    pub rel: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// Relative tolerances: fp32 1e-4 on z, logdet, a, b; 1e-3 on the score. fp16 keeps
/// LayerNorm, softmax, exponentials and reductions in fp32 but rounds weights and activations to
/// 11 significant bits (2^-11 = 4.9e-4 relative each); through a stack of layers this compounds
/// to about 1e-2, and the score (a difference of such quantities) to a few 1e-2.
pub fn tolerance(precision: &str, output: &str) -> f64 {
    match (precision, output) {
        ("fp32", "score") => 1e-3,
        ("fp32", _) => 1e-4,
        (_, "score") => 5e-2,
        _ => 2e-2,
    }
}

fn compare(rows: &mut Vec<CheckRow>, engine: &str, graph: &str, precision: &str, output: &str, ours: &[f32], burn: &[f32]) {
    let max_abs = ours.iter().zip(burn).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let scale = burn.iter().map(|b| b.abs() as f64).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let nan = ours.iter().any(|v| !v.is_finite());
    let rel = if nan { f64::INFINITY } else { max_abs / scale };
    let tol = tolerance(precision, output);
    rows.push(CheckRow {
        graph: graph.into(),
        precision: precision.into(),
        engine: engine.into(),
        output: output.into(),
        max_abs,
        rel,
        tolerance: tol,
        pass: rel <= tol,
    });
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32")
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] itarflow_base::manifest::ManifestError),
    #[error(transparent)]
    Export(#[from] itarflow_export::ExportError),
    #[error(transparent)]
    Runtime(#[from] itarflow_rt::RtError),
    #[error("{0}")]
    Invalid(String),
}

/// Checks every graph of the package in `dir` against `model` with tract and, when its library
/// is found, ONNX Runtime on CPU; on a batch of `batch` random inputs (seeded) at noise level `t`.
/// Returns the rows and, when ONNX Runtime could not be used, the reason.
pub fn check_package(
    model: &ITarFlow,
    dir: &Path,
    batch: usize,
    t: f64,
    seed: u64,
) -> Result<(Vec<CheckRow>, Option<String>), DeployError> {
    let mut rows = check_with(model, dir, batch, t, seed, "tract", TractGraph::load)?;
    let ort_reason = match itarflow_rt::provider::ort::environment(None) {
        Ok(_) => {
            let load = |p: &Path| OrtGraph::load(p, &OrtDevice::Cpu, None);
            rows.extend(check_with(model, dir, batch, t, seed, "ort-cpu", load)?);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    Ok((rows, ort_reason))
}

fn check_with<E: Engine>(
    model: &ITarFlow,
    dir: &Path,
    batch: usize,
    t: f64,
    seed: u64,
    engine: &str,
    load: impl Fn(&Path) -> Result<E, itarflow_rt::RtError>,
) -> Result<Vec<CheckRow>, DeployError> {
    let manifest = Manifest::read(dir)?;
    manifest.verify(dir)?;
    let c = &model.config;
    let device = model.device();
    let mut noise = itarflow_base::GaussianNoise::new(seed);
    let labels: Vec<i64> = (0..batch as i64)
        .map(|i| if c.num_classes == 0 || i % 3 == 2 { -1 } else { i % c.num_classes as i64 })
        .collect();
    let y = if c.num_classes == 0 { Labels::None } else { Labels::Classes(labels.clone()) };
    let ts: Vec<f32> = (0..batch).map(|i| (t * (1.0 + 0.5 * i as f64 / batch as f64)) as f32).collect();
    let t_tensor = Tensor::<1>::from_data(TensorData::new(ts.clone(), [batch]), &device);
    let conds = model.conds(t_tensor.clone(), &y);
    let mut common = vec![Feed::F32(vec![batch], ts.clone())];
    if c.num_classes > 0 {
        common.push(Feed::I64(vec![batch], labels.clone()));
    }
    let mut rows = Vec::new();
    for entry in &manifest.graphs {
        let run = load(&dir.join(&entry.file))?;
        let p = entry.precision.as_str();
        match (entry.kind, entry.layer) {
            (GraphKind::Forward, Some(l)) => {
                let (tokens, width) = model.token_shape(l);
                let x = noise.sample_f32(batch * tokens * width);
                let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [batch, tokens, width]), &device);
                let (z, ld) = model.layers[l].forward(xt, &conds[l], &model.shared_backbone);
                let mut feeds = vec![Feed::F32(vec![batch, tokens, width], x)];
                feeds.extend(common.iter().cloned());
                let out = run_host(&run, &feeds)?;
                compare(&mut rows, engine, &entry.name, p, "z", out[0].f32(), &vals(z));
                compare(&mut rows, engine, &entry.name, p, "logdet", out[1].f32(), &vals(ld));
            }
            (GraphKind::Cond, Some(l)) => {
                let out = run_host(&run, &common)?;
                compare(&mut rows, engine, &entry.name, p, "cond", out[0].f32(), &vals(conds[l].clone()));
            }
            (GraphKind::Step, Some(l)) => {
                let layer = &model.layers[l];
                let (tokens, width) = model.token_shape(l);
                let info = &manifest.layers[l];
                let u = noise.sample_f32(batch * tokens * width);
                let ut = Tensor::<3>::from_data(TensorData::new(u.clone(), [batch, tokens, width]), &device);
                let mut caches = vec![KvCache::default(); layer.depth(&model.shared_backbone)];
                let cond = vals(conds[l].clone());
                let mut past: Vec<Feed> = vec![Feed::F32(vec![batch, info.heads, 0, info.head_dim], vec![]); 2 * info.blocks];
                let (mut got_a, mut got_b, mut want_a, mut want_b) = (vec![], vec![], vec![], vec![]);
                for n in 0..tokens {
                    let token: Vec<f32> =
                        (0..batch).flat_map(|r| u[(r * tokens + n) * width..(r * tokens + n + 1) * width].to_vec()).collect();
                    let tok = ut.clone().narrow(1, n, 1).reshape([batch, width]);
                    let (a, b) = layer.step(tok, n, &conds[l], &model.shared_backbone, &mut caches, None);
                    want_a.extend(vals(a));
                    want_b.extend(vals(b));
                    let mut feeds = vec![
                        Feed::F32(vec![batch, width], token),
                        Feed::I64(vec![], vec![n as i64]),
                        Feed::F32(vec![batch, info.width], cond.clone()),
                        Feed::F32(vec![batch], vec![1.0; batch]),
                    ];
                    feeds.extend(past.iter().cloned());
                    let out = run_host(&run, &feeds)?;
                    got_a.extend_from_slice(out[0].f32());
                    got_b.extend_from_slice(out[1].f32());
                    past = out[2..].to_vec();
                }
                compare(&mut rows, engine, &entry.name, p, "a", &got_a, &want_a);
                compare(&mut rows, engine, &entry.name, p, "b", &got_b, &want_b);
            }
            (GraphKind::Score, None) => {
                let s = c.img_size;
                let x = noise.sample_f32(batch * c.in_channels * s * s).iter().map(|v| v * 0.5).collect::<Vec<_>>();
                let shape = [batch, c.in_channels, s, s];
                let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device);
                let (score, logp) = model.score(xt, t_tensor.clone(), &y);
                let mut feeds = vec![Feed::F32(shape.to_vec(), x)];
                feeds.extend(common.iter().cloned());
                let out = run_host(&run, &feeds)?;
                compare(&mut rows, engine, &entry.name, p, "score", out[0].f32(), &vals(score));
                compare(&mut rows, engine, &entry.name, p, "logp", out[1].f32(), &vals(logp));
            }
            _ => return Err(DeployError::Invalid(format!("unexpected graph entry {}", entry.name))),
        }
    }
    Ok(rows)
}

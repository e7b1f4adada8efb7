//! `check`: runs every graph of a package on every provider that loads here, at every precision
//! the package holds, on the inputs of its reference file, and compares each output with the
//! reference (the exporting framework's outputs) and with the first provider checked.
//!
//! Besides each graph alone, the chains are checked: log p through the forward graphs, and the
//! score through the forward and per-layer VJP graphs (the layer-wise score).

use std::collections::HashMap;
use std::sync::Arc;

use itarflow_base::Npz;
use itarflow_base::check::CheckRow;
use itarflow_base::manifest::GraphKind;
use itarflow_base::reference as names;

use crate::graphs::{GraphSet, Loaded};
use crate::model::Model;
use crate::provider::{Engine, HostTensor, Precision, Provider, ProviderOptions, run_host};
use crate::sampler::{self, ScoreForm, StepCache};
use crate::{RtError, with_graphs};

/// The outcome of a check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub rows: Vec<CheckRow>,
    /// Providers that could not run here, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl CheckReport {
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.pass).count()
    }
}

/// An output of a graph: (graph, output, values).
type Output = (String, String, Vec<f32>);

fn f32s(npz: &Npz, name: &str) -> Result<(Vec<usize>, Vec<f32>), RtError> {
    let a = npz.require(name, "see itarflow_base::reference for the reference file's arrays")?;
    let rank = a.shape.len();
    Ok(npz.f32(name, rank, "", "")?)
}

/// The reference arrays, checked against the model.
struct Reference<'a> {
    npz: &'a Npz,
    t: Vec<f32>,
    y: Vec<i64>,
    b: usize,
}

impl<'a> Reference<'a> {
    fn new(npz: &'a Npz, model: &Model) -> Result<Self, RtError> {
        let (_, t) = f32s(npz, names::T)?;
        let b = t.len();
        let y = if model.num_classes() > 0 { npz.i64(names::Y, 1, "(B,)", "the labels")?.1 } else { vec![-1; b] };
        if y.len() != b || b == 0 {
            return Err(RtError::Invalid(format!("{}: 't' and 'y' must hold one entry per reference row", npz.path().display())));
        }
        Ok(Self { npz, t, y, b })
    }

    fn cond_feeds(&self, model: &Model) -> Vec<HostTensor> {
        let mut v = vec![HostTensor::F32(vec![self.b], self.t.clone())];
        if model.num_classes() > 0 {
            v.push(HostTensor::I64(vec![self.b], self.y.clone()));
        }
        v
    }
}

fn run_graphs<E: Engine>(gs: &GraphSet<E>, r: &Reference) -> Result<Vec<Output>, RtError> {
    let model = gs.model();
    let m = &model.manifest;
    let mut outs: Vec<Output> = Vec::new();
    let push = |outs: &mut Vec<Output>, graph: &str, output: &str, v: Vec<f32>| outs.push((graph.into(), output.into(), v));
    let common = r.cond_feeds(model);
    let b = r.b;
    for l in 0..m.layers.len() {
        let info = &m.layers[l];
        let cond_g = &gs.get(GraphKind::Cond)?[l];
        let cond = run_host(cond_g, &common)?.remove(0).into_f32();
        push(&mut outs, &format!("layer{l}_cond"), "cond", cond);

        let (shape, x) = f32s(r.npz, &names::layer(l, "x"))?;
        let mut feeds = vec![HostTensor::F32(shape, x)];
        feeds.extend(common.iter().cloned());
        let mut out = run_host(&gs.get(GraphKind::Forward)?[l], &feeds)?;
        let logdet = out.remove(1).into_f32();
        push(&mut outs, &format!("layer{l}_forward"), "z", out.remove(0).into_f32());
        push(&mut outs, &format!("layer{l}_forward"), "logdet", logdet);

        let (_, u) = f32s(r.npz, &names::layer(l, "u"))?;
        let (_, ref_cond) = f32s(r.npz, &names::layer(l, "cond"))?;
        for step_cache in [StepCache::Growing, StepCache::Fixed] {
            let g = &gs.get(step_cache.graph_kind())?[l];
            let name = &model.entry(step_cache.graph_kind(), Some(l), gs.precision().name())?.name;
            let (tokens, width) = (info.tokens, info.token_dim);
            let cache = step_cache.past_len(tokens, 0);
            let zeros = vec![0.0; b * info.heads * cache * info.head_dim];
            let mut past = vec![HostTensor::F32(vec![b, info.heads, cache, info.head_dim], zeros); 2 * info.blocks];
            let (mut a, mut sh) = (Vec::new(), Vec::new());
            for n in 0..tokens {
                let token: Vec<f32> = (0..b).flat_map(|row| u[(row * tokens + n) * width..(row * tokens + n + 1) * width].to_vec()).collect();
                let mut feeds = vec![
                    HostTensor::F32(vec![b, width], token),
                    HostTensor::I64(vec![], vec![n as i64]),
                    HostTensor::F32(vec![b, info.width], ref_cond.clone()),
                    HostTensor::F32(vec![b], vec![1.0; b]),
                ];
                feeds.extend(past);
                let mut out = run_host(g, &feeds)?;
                past = out.split_off(2);
                sh.extend_from_slice(out[1].f32());
                a.extend_from_slice(out[0].f32());
            }
            push(&mut outs, name, "a", a);
            push(&mut outs, name, "b", sh);
        }
    }
    let (shape, x) = f32s(r.npz, names::SCORE_X)?;
    let mut feeds = vec![HostTensor::F32(shape, x.clone())];
    feeds.extend(common.iter().cloned());
    let mut out = run_host(gs.score()?, &feeds)?;
    let logp = out.remove(1).into_f32();
    push(&mut outs, "score", "score", out.remove(0).into_f32());
    push(&mut outs, "score", "logp", logp);
    let (score, logp) = sampler::score(gs, ScoreForm::Layerwise, &x, &r.t, &r.y, 0)?;
    push(&mut outs, "layerwise_score", "score", score);
    push(&mut outs, "layerwise_score", "logp", logp);
    push(&mut outs, "forward_chain", "logp", sampler::log_prob(gs, &x, &r.t, &r.y, 0)?);
    Ok(outs)
}

/// The reference array an output is compared with: `layer{l}.{output}` for a layer's graph,
/// else the whole-model score or log p.
fn reference_name(graph: &str, output: &str) -> String {
    let layer = graph.strip_prefix("layer").and_then(|rest| rest.split('_').next()).filter(|l| l.parse::<usize>().is_ok());
    match layer {
        Some(l) => format!("layer{l}.{output}"),
        None if output == "score" => names::SCORE.into(),
        None => names::LOGP.into(),
    }
}

/// Checks `model` on `providers` (each at every precision the package holds) against the
/// reference arrays in `reference`.
pub fn check(model: Arc<Model>, reference: &Npz, providers: &[Provider], opts: &ProviderOptions) -> Result<CheckReport, RtError> {
    let r = Reference::new(reference, &model)?;
    let mut precisions: Vec<Precision> = Vec::new();
    for p in [Precision::Fp32, Precision::Fp16] {
        if model.manifest.graphs.iter().any(|g| g.precision == p.name()) {
            precisions.push(p);
        }
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut first: HashMap<(String, String, String), Vec<f32>> = HashMap::new();
    for &provider in providers {
        for &precision in &precisions {
            let loaded = match Loaded::open(model.clone(), provider, precision, opts) {
                Ok(l) => l,
                Err(e) => {
                    if !skipped.iter().any(|(p, _): &(String, String)| p == provider.name()) {
                        skipped.push((provider.name().to_string(), e.to_string()));
                    }
                    continue;
                }
            };
            let outs = with_graphs!(&loaded, g => run_graphs(g, &r))?;
            for (graph, output, ours) in outs {
                let want_name = reference_name(&graph, &output);
                let (_, want) = f32s(reference, &want_name)?;
                let mut row = CheckRow::new(&graph, precision.name(), provider.name(), &output, &ours, &want);
                let key = (graph.clone(), output.clone(), precision.name().to_string());
                match first.get(&key) {
                    Some(base) => row.rel_vs_first = Some(itarflow_base::check::errors(&ours, base).1),
                    None => {
                        first.insert(key, ours);
                    }
                }
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return Err(RtError::Invalid(format!("no provider could run the package: {skipped:?}")));
    }
    Ok(CheckReport { rows, skipped })
}

/// The package's own reference file (written by `itarflow export`).
pub fn package_reference(model: &Model) -> Result<Npz, RtError> {
    let file = model.manifest.reference_file.as_ref().ok_or_else(|| {
        RtError::Invalid(format!(
            "{} holds no reference outputs; pass --reference FILE.npz or re-export it with `itarflow export`",
            model.dir.display()
        ))
    })?;
    Ok(Npz::read(model.dir.join(file))?)
}

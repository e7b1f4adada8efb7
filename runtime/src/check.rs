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
use crate::provider::{Engine, HostTensor, LoopInit, Precision, Provider, ProviderOptions, run_host};
use crate::sampler::{self, CfgStyle, ScoreForm, StepCache};
use crate::{RtError, with_graphs};

/// The outcome of a check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub rows: Vec<CheckRow>,
    /// Providers that could not run here, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Graphs a provider that runs here could not run, with the reason.
    pub unsupported: Vec<Unsupported>,
    /// tract's CPU kernels, where tract ran ([`crate::provider::tract::cpu_kernels`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kernels: Option<String>,
}

impl CheckReport {
    /// Outputs past tolerance and graphs that could not run.
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.pass).count() + self.unsupported.len()
    }
}

/// An output of a graph: (graph, output, values, and the expected values where they are not a
/// reference array but computed here from them).
type Output = (String, String, Vec<f32>, Option<Vec<f32>>);

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
            return Err(RtError::Input(format!("{}: 't' and 'y' must hold one entry per reference row", npz.path().display())));
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

/// A graph (or chain) that could not run on a provider, with the provider's reason (which names
/// the node and op where the engine stopped).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unsupported {
    pub engine: String,
    pub precision: String,
    pub graph: String,
    pub reason: String,
}

/// Outputs of the graphs that ran, and the graphs that could not, with the reason.
type Runs = (Vec<Output>, Vec<(String, String)>);

fn one(graph: &str, output: &str, v: Vec<f32>) -> Output {
    (graph.into(), output.into(), v, None)
}

/// Runs every graph of the package on its reference inputs; a graph that fails is recorded with
/// its error and the others still run.
fn run_graphs<E: Engine>(gs: &GraphSet<E>, r: &Reference) -> Result<Runs, RtError> {
    let model = gs.model();
    let m = &model.manifest;
    let precision = gs.precision().name();
    let (mut outs, mut failed): Runs = (Vec::new(), Vec::new());
    let mut attempt = |graph: String, section: &mut dyn FnMut() -> Result<Vec<Output>, RtError>| match section() {
        Ok(o) => outs.extend(o),
        Err(e) => failed.push((graph, e.to_string())),
    };
    let common = r.cond_feeds(model);
    for l in 0..m.layers.len() {
        attempt(format!("layer{l}_cond"), &mut || {
            let cond = run_host(&gs.get(GraphKind::Cond)?[l], &common)?.remove(0).into_f32()?;
            Ok(vec![one(&format!("layer{l}_cond"), "cond", cond)])
        });
        attempt(format!("layer{l}_forward"), &mut || {
            let (shape, x) = f32s(r.npz, &names::layer(l, "x"))?;
            let mut feeds = vec![HostTensor::F32(shape, x)];
            feeds.extend(common.iter().cloned());
            let mut out = run_host(&gs.get(GraphKind::Forward)?[l], &feeds)?;
            let logdet = out.remove(1).into_f32()?;
            let name = format!("layer{l}_forward");
            Ok(vec![one(&name, "z", out.remove(0).into_f32()?), one(&name, "logdet", logdet)])
        });
        let (_, u) = f32s(r.npz, &names::layer(l, "u"))?;
        let (_, ref_cond) = f32s(r.npz, &names::layer(l, "cond"))?;
        for step_cache in [StepCache::Growing, StepCache::Fixed] {
            let name = gs.entry(step_cache.graph_kind(), Some(l))?.name.clone();
            attempt(name.clone(), &mut || {
                let (a, b) = run_steps(gs, r, l, step_cache, &u, &ref_cond)?;
                Ok(vec![one(&name, "a", a), one(&name, "b", b)])
            });
        }
        for kind in [GraphKind::Invert, GraphKind::InvertGuided, GraphKind::InvertGuidedStarflow] {
            if let Some(entry) = m.graph(kind, Some(l), precision) {
                attempt(entry.name.clone(), &mut || check_inversion(gs, r, l, kind, &u, &ref_cond));
            }
        }
    }
    let (shape, x) = f32s(r.npz, names::SCORE_X)?;
    if m.graph(GraphKind::DenoiseStep, None, precision).is_some() {
        attempt("denoise_step".into(), &mut || check_denoise_step(gs, r, &shape, &x));
    }
    attempt("score".into(), &mut || {
        let mut feeds = vec![HostTensor::F32(shape.clone(), x.clone())];
        feeds.extend(common.iter().cloned());
        let mut out = run_host(gs.score()?, &feeds)?;
        let logp = out.remove(1).into_f32()?;
        Ok(vec![one("score", "score", out.remove(0).into_f32()?), one("score", "logp", logp)])
    });
    attempt("layerwise_score".into(), &mut || {
        let (score, logp) = sampler::score(gs, ScoreForm::Layerwise, &x, &r.t, &r.y, 0)?;
        Ok(vec![one("layerwise_score", "score", score), one("layerwise_score", "logp", logp)])
    });
    attempt("forward_chain".into(), &mut || Ok(vec![one("forward_chain", "logp", sampler::log_prob(gs, &x, &r.t, &r.y, 0)?)]));
    Ok((outs, failed))
}

/// Layer `l`'s step graph over the reference tokens `u`, one token at a time with its cache from
/// empty: the (a, b) of every step, (T, B, c) each.
fn run_steps<E: Engine>(
    gs: &GraphSet<E>,
    r: &Reference,
    l: usize,
    cache: StepCache,
    u: &[f32],
    cond: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), RtError> {
    let info = &gs.model().manifest.layers[l];
    let g = &gs.get(cache.graph_kind())?[l];
    let (b, tokens, width) = (r.b, info.tokens, info.token_dim);
    let len = cache.past_len(tokens, 0);
    let zeros = vec![0.0; b * info.heads * len * info.head_dim];
    let mut past = vec![HostTensor::F32(vec![b, info.heads, len, info.head_dim], zeros); 2 * info.blocks];
    let (mut a, mut sh) = (Vec::new(), Vec::new());
    for n in 0..tokens {
        let token: Vec<f32> = (0..b).flat_map(|row| u[(row * tokens + n) * width..(row * tokens + n + 1) * width].to_vec()).collect();
        let mut feeds = vec![
            HostTensor::F32(vec![b, width], token),
            HostTensor::I64(vec![], vec![n as i64]),
            HostTensor::F32(vec![b, info.width], cond.to_vec()),
            HostTensor::F32(vec![b], vec![1.0; b]),
        ];
        feeds.extend(past);
        let mut out = run_host(g, &feeds)?;
        past = out.split_off(2);
        sh.extend_from_slice(out[1].f32()?);
        a.extend_from_slice(out[0].f32()?);
    }
    Ok((a, sh))
}

/// The fused inversion loops of layer `l` (unguided, and guided with both halves conditional,
/// where any guidance weight leaves the conditional step as it is), started from the prior
/// values z that the reference's (a, b) give for its tokens u: z_0 = u_0,
/// z_{n+1} = (u_{n+1} - b_n) exp(-a_n). Inverted, they give u back. Run twice ("u", then
/// "u_rerun"): a GPU provider's second loop reuses the first's buffers and captured graphs.
fn check_inversion<E: Engine>(
    gs: &GraphSet<E>,
    r: &Reference,
    l: usize,
    kind: GraphKind,
    u: &[f32],
    cond: &[f32],
) -> Result<Vec<Output>, RtError> {
    let model = gs.model();
    let info = &model.manifest.layers[l];
    let (b, tokens, width) = (r.b, info.tokens, info.token_dim);
    let (_, a) = f32s(r.npz, &names::layer(l, "a"))?;
    let (_, sh) = f32s(r.npz, &names::layer(l, "b"))?;
    let mut z = u.to_vec();
    for n in 0..tokens - 1 {
        for row in 0..b {
            for k in 0..width {
                let (i, ab) = ((row * tokens + n + 1) * width + k, (n * b + row) * width + k);
                z[i] = (u[i] - sh[ab]) * (-a[ab]).exp();
            }
        }
    }
    let entry = gs.entry(kind, Some(l))?;
    let g = &gs.get(kind)?[l];
    let host = if kind == GraphKind::Invert {
        vec![HostTensor::F32(vec![b, info.width], cond.to_vec())]
    } else {
        // Both branches alike: either style's guidance leaves a branch's (scale, shift) as it is.
        let style = if kind == GraphKind::InvertGuidedStarflow { CfgStyle::Starflow } else { CfgStyle::Tarflow };
        let inputs = sampler::GuidedInputs { images: b, cond, cond_u: cond, inv_temp_u: 1.0, weights: vec![2.0; tokens], style };
        inputs.host(entry, info.width)
    };
    let fixed = host.iter().map(|t| g.upload(t)).collect::<Result<Vec<_>, _>>()?;
    let mut outs = Vec::new();
    for output in ["u", "u_rerun"] {
        let mut state =
            vec![LoopInit::Host(HostTensor::F32(vec![b, tokens, width], z.clone())), LoopInit::Host(HostTensor::I64(vec![], vec![0]))];
        state.extend(sampler::empty_caches(entry, b));
        let out = g.run_loop(&fixed.iter().collect::<Vec<_>>(), state, tokens - 1, 1)?.remove(0).into_f32()?;
        outs.push((entry.name.clone(), output.to_string(), out, Some(u.to_vec())));
    }
    Ok(outs)
}

/// The denoising-step loop for one step from each reference image's t to t / 2, against the
/// Euler step computed here from the reference score (twice, as the inversion loops).
fn check_denoise_step<E: Engine>(gs: &GraphSet<E>, r: &Reference, shape: &[usize], x: &[f32]) -> Result<Vec<Output>, RtError> {
    let model = gs.model();
    let g = gs.denoise_step()?;
    let (_, score) = f32s(r.npz, names::SCORE)?;
    let per = x.len() / r.b;
    let levels: Vec<f32> = r.t.iter().flat_map(|&t| [t, 0.5 * t]).collect();
    let want: Vec<f32> = (0..x.len())
        .map(|i| {
            let (t, next) = (r.t[i / per], 0.5 * r.t[i / per]);
            let x0 = x[i] + t * t * score[i];
            x[i] - (x[i] - x0) / t * (t - next)
        })
        .collect();
    let mut fixed = vec![g.upload(&HostTensor::F32(vec![r.b, 2], levels))?];
    if model.num_classes() > 0 {
        fixed.push(g.upload(&HostTensor::I64(vec![r.b], r.y.clone()))?);
    }
    fixed.push(g.upload(&HostTensor::F32(vec![2], vec![f32::NEG_INFINITY, f32::INFINITY]))?);
    let mut outs = Vec::new();
    for output in ["x", "x_rerun"] {
        let state = vec![LoopInit::Host(HostTensor::F32(shape.to_vec(), x.to_vec())), LoopInit::Host(HostTensor::I64(vec![], vec![0]))];
        let out = g.run_loop(&fixed.iter().collect::<Vec<_>>(), state, 1, 1)?.remove(0).into_f32()?;
        outs.push(("denoise_step".into(), output.into(), out, Some(want.clone())));
    }
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
    let mut unsupported = Vec::new();
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
            let (outs, failed) = with_graphs!(&loaded, g => run_graphs(g, &r))?;
            unsupported.extend(failed.into_iter().map(|(graph, reason)| Unsupported {
                engine: provider.name().into(),
                precision: precision.name().into(),
                graph,
                reason,
            }));
            for (graph, output, ours, computed) in outs {
                let want = match computed {
                    Some(w) => w,
                    None => f32s(reference, &reference_name(&graph, &output))?.1,
                };
                // fp32 graphs on CUDA with TF32 are held to the TF32 tolerance (and say so).
                let label = if opts.tf32 && provider == Provider::Cuda && precision == Precision::Fp32 { "tf32" } else { precision.name() };
                let mut row = CheckRow::new(&graph, label, provider.name(), &output, &ours, &want);
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
        return Err(RtError::NoProvider(format!("{skipped:?} {unsupported:?}")));
    }
    let cpu_kernels = rows.iter().any(|r| r.engine == Provider::Tract.name()).then(crate::provider::tract::cpu_kernels);
    Ok(CheckReport { rows, skipped, unsupported, cpu_kernels })
}

/// The package's own reference file (written by `itarflow export`).
pub fn package_reference(model: &Model) -> Result<Npz, RtError> {
    let file = model.manifest.reference_file.as_ref().ok_or_else(|| {
        RtError::Package(format!(
            "{} holds no reference outputs; pass --reference FILE.npz or re-export it with `itarflow export`",
            model.dir.display()
        ))
    })?;
    Ok(Npz::read(model.dir.join(file))?)
}

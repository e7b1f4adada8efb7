//! The score (grad_x log p) and log p of images: through the whole-model score graph, or the
//! forward graphs and the per-layer VJP graphs (layer-wise), in batches split over threads on
//! engines whose runs proceed in parallel.

use itarflow_base::ModelConfig;
use itarflow_base::manifest::GraphKind;

use super::ScoreForm;
use super::layout::{chunks, patchify, repatch, split, unpatchify};
use crate::RtError;
use crate::graphs::GraphSet;
use crate::model::Model;
use crate::provider::{Engine, HostTensor};

/// Uploads the conditioning inputs (t and, for a conditional model, y) of `n` rows.
fn cond_feeds<E: Engine>(g: &E, c: &ModelConfig, t: &[f32], labels: &[i64]) -> Result<Vec<E::Value>, RtError> {
    let mut v = vec![g.upload(&HostTensor::F32(vec![t.len()], t.to_vec()))?];
    if c.num_classes > 0 {
        v.push(g.upload(&HostTensor::I64(vec![labels.len()], labels.to_vec()))?);
    }
    Ok(v)
}

fn check_batch(model: &Model, x: &[f32], t: &[f32], labels: &[i64]) -> Result<(), RtError> {
    let b = t.len();
    if x.len() != b * model.image_len() || labels.len() != b {
        return Err(RtError::Input(format!(
            "{} image values, {} noise levels and {} labels do not describe one batch of images of {} values",
            x.len(),
            b,
            labels.len(),
            model.image_len()
        )));
    }
    Ok(())
}

/// A batch's pass through the per-layer forward graphs.
struct ForwardPass {
    /// Each layer's input tokens.
    inputs: Vec<Vec<f32>>,
    /// The last layer's output.
    z: Vec<f32>,
    logp: Vec<f32>,
}

fn forward_pass<E: Engine>(graphs: &GraphSet<E>, x: &[f32], t: &[f32], labels: &[i64]) -> Result<ForwardPass, RtError> {
    let model = graphs.model();
    let c = &model.manifest.model;
    let fwd = graphs.get(GraphKind::Forward)?;
    let n = t.len();
    let mut h = patchify(x, n, c, c.patch_size(0));
    if c.input_scale != 1.0 {
        h.iter_mut().for_each(|v| *v *= c.input_scale as f32);
    }
    let mut inputs = Vec::with_capacity(c.num_layers);
    let mut logdet = vec![0.0f64; n];
    for (l, g) in fwd.iter().enumerate() {
        if l > 0 {
            h = repatch(&h, n, c, c.patch_size(l - 1), c.patch_size(l));
        }
        let info = &model.manifest.layers[l];
        let mut feeds = vec![g.upload(&HostTensor::F32(vec![n, info.tokens, info.token_dim], h.clone()))?];
        feeds.extend(cond_feeds(g, c, t, labels)?);
        let out = g.run_values(feeds.iter().collect())?;
        inputs.push(std::mem::replace(&mut h, g.download(&out[0])?.into_f32()?));
        for (acc, v) in logdet.iter_mut().zip(g.download(&out[1])?.f32()?) {
            *acc += *v as f64;
        }
    }
    let d = c.data_dim() as f64;
    let per = h.len() / n.max(1);
    let logp = (0..n)
        .map(|r| {
            let sq: f64 = h[r * per..(r + 1) * per].iter().map(|v| (*v as f64).powi(2)).sum();
            (-0.5 * sq + d * (logdet[r] + c.input_scale.ln()) - 0.5 * d * (2.0 * std::f64::consts::PI).ln()) as f32
        })
        .collect();
    Ok(ForwardPass { inputs, z: h, logp })
}

/// log p(x | t, y) of images (B, C, H, W) through the per-layer forward graphs, in batches.
pub fn log_prob<E: Engine>(graphs: &GraphSet<E>, x: &[f32], t: &[f32], labels: &[i64], batch: usize) -> Result<Vec<f32>, RtError> {
    let model = graphs.model();
    check_batch(model, x, t, labels)?;
    let per = model.image_len();
    let mut logp = Vec::with_capacity(t.len());
    for (s, n) in chunks(t.len(), batch) {
        logp.extend(forward_pass(graphs, &x[s * per..(s + n) * per], &t[s..s + n], &labels[s..s + n])?.logp);
    }
    Ok(logp)
}

/// Scores (B, C, H, W) and log p (B,) of a batch.
type Scored = (Vec<f32>, Vec<f32>);

/// Score and log p of one batch of images (B, C, H, W) in one run of the graphs.
fn score_batch<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm, xs: &[f32], ts: &[f32], ys: &[i64]) -> Result<Scored, RtError> {
    let model = graphs.model();
    let c = &model.manifest.model;
    let n = ts.len();
    match form {
        ScoreForm::Whole => {
            let g = graphs.score()?;
            let mut feeds = vec![g.upload(&HostTensor::F32(vec![n, c.in_channels, c.img_size, c.img_size], xs.to_vec()))?];
            feeds.extend(cond_feeds(g, c, ts, ys)?);
            let out = g.run_values(feeds.iter().collect())?;
            Ok((g.download(&out[0])?.into_f32()?, g.download(&out[1])?.into_f32()?))
        }
        ScoreForm::Layerwise => {
            let ForwardPass { inputs, z, logp } = forward_pass(graphs, xs, ts, ys)?;
            let vjp = graphs.get(GraphKind::LayerVjp)?;
            let d = c.data_dim() as f32;
            // d log p / d z = -z; d log p / d logdet_l = D for every layer.
            let mut gz: Vec<f32> = z.iter().map(|v| -v).collect();
            for l in (0..c.num_layers).rev() {
                let (g, info) = (&vjp[l], &model.manifest.layers[l]);
                let shape = vec![n, info.tokens, info.token_dim];
                let mut feeds = vec![g.upload(&HostTensor::F32(shape.clone(), inputs[l].clone()))?];
                feeds.extend(cond_feeds(g, c, ts, ys)?);
                feeds.push(g.upload(&HostTensor::F32(shape, gz))?);
                feeds.push(g.upload(&HostTensor::F32(vec![n], vec![d; n]))?);
                let out = g.run_values(feeds.iter().collect())?;
                gz = g.download(&out[0])?.into_f32()?;
                if l > 0 {
                    gz = repatch(&gz, n, c, c.patch_size(l), c.patch_size(l - 1));
                }
            }
            let mut gx = unpatchify(&gz, n, c, c.patch_size(0));
            if c.input_scale != 1.0 {
                gx.iter_mut().for_each(|v| *v *= c.input_scale as f32);
            }
            Ok((gx, logp))
        }
    }
}

/// Threads one score batch is split over: the graph set's threads on an engine whose runs can
/// share a graph (tract), else 1 (ONNX Runtime parallelises inside each run).
fn score_threads<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm) -> Result<usize, RtError> {
    let g = &graphs.get(form.graph_kinds()[0])?[0];
    Ok(if g.concurrent() { graphs.threads() } else { 1 })
}

/// Score and log p of images (B, C, H, W) at per-image noise levels, in batches of `batch`; on an
/// engine that runs concurrently, each batch is split over the graph set's threads.
pub fn score<E: Engine>(
    graphs: &GraphSet<E>,
    form: ScoreForm,
    x: &[f32],
    t: &[f32],
    labels: &[i64],
    batch: usize,
) -> Result<Scored, RtError> {
    let model = graphs.model();
    check_batch(model, x, t, labels)?;
    let per = model.image_len();
    let threads = score_threads(graphs, form)?;
    let (mut scores, mut logps) = (Vec::with_capacity(x.len()), Vec::with_capacity(t.len()));
    for (s, n) in chunks(t.len(), batch) {
        let parts = split(n, threads);
        let run = |(a, len): (usize, usize)| {
            let (a, b) = (s + a, s + a + len);
            score_batch(graphs, form, &x[a * per..b * per], &t[a..b], &labels[a..b])
        };
        let results: Vec<Result<Scored, RtError>> = if parts.len() == 1 {
            vec![run(parts[0])]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = parts.iter().map(|&p| scope.spawn(move || run(p))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(RtError::Internal("a scoring thread panicked".into()))))
                    .collect()
            })
        };
        for r in results {
            let (sc, lp) = r?;
            scores.extend(sc);
            logps.extend(lp);
        }
    }
    Ok((scores, logps))
}

/// Makes the graphs of phase 2 ready for `images` images scored `batch` at a time (tract builds a
/// plan per batch size): run on a second thread while phase 1 runs, it takes that work off the
/// critical path.
pub fn prepare_phase2<E: Engine>(graphs: &GraphSet<E>, form: ScoreForm, images: usize, batch: usize) -> Result<(), RtError> {
    let threads = score_threads(graphs, form)?;
    // The run sizes `score` will use: its chunks, each split over the threads.
    let mut sizes: Vec<usize> =
        chunks(images, batch).into_iter().flat_map(|(_, c)| split(c, threads).into_iter().map(|(_, len)| len)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &kind in form.graph_kinds() {
        for g in graphs.get(kind)? {
            for &n in &sizes {
                g.prepare(n)?;
            }
        }
    }
    Ok(())
}

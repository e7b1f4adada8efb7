//! From the Burn model to a model package: the weights under the reference's names, and the
//! reference outputs every package carries (`reference.npz`: inputs of every graph kind and what
//! the Burn model computes for them), which `itarflow export --check` and `itarflow-rt check`
//! compare every graph on every provider against.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use itarflow_base::reference as names;
use itarflow_base::{Array, RawTensor};
use itarflow_rt::check::CheckReport;
use itarflow_rt::{Model, Provider, ProviderOptions};

use crate::checkpoint::names::to_named;
use crate::model::{ITarFlow, Labels};
use crate::nn::KvCache;

/// The model's weights under the reference's names, as the exporter takes them.
pub fn weights(model: &ITarFlow) -> BTreeMap<String, RawTensor> {
    to_named(model).into_iter().collect()
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32")
}

/// Reference arrays (see [`itarflow_base::reference`]) for `batch` seeded random inputs at noise
/// levels from `t` to 1.5 `t`, with labels that include the unconditional -1.
pub fn reference(model: &ITarFlow, batch: usize, t: f64, seed: u64) -> Vec<(String, Array)> {
    let c = &model.config;
    let device = model.device();
    let mut noise = itarflow_base::GaussianNoise::new(seed);
    let labels: Vec<i64> =
        (0..batch as i64).map(|i| if c.num_classes == 0 || i % 3 == 2 { -1 } else { i % c.num_classes as i64 }).collect();
    let y = if c.num_classes == 0 { Labels::None } else { Labels::Classes(labels.clone()) };
    let ts: Vec<f32> = (0..batch).map(|i| (t * (1.0 + 0.5 * i as f64 / batch as f64)) as f32).collect();
    let t_tensor = Tensor::<1>::from_data(TensorData::new(ts.clone(), [batch]), &device);
    let conds = model.conds(t_tensor.clone(), &y);
    let mut out = vec![(names::T.to_string(), Array::f32(&[batch], ts))];
    if c.num_classes > 0 {
        out.push((names::Y.to_string(), Array::i64(&[batch], labels)));
    }
    for (l, layer) in model.layers.iter().enumerate() {
        let (tokens, width) = model.token_shape(l);
        let shape = [batch, tokens, width];
        let x = noise.sample_f32(batch * tokens * width);
        let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), shape), &device);
        let (z, ld) = layer.forward(xt, &conds[l], &model.shared_backbone);
        out.push((names::layer(l, "x"), Array::f32(&shape, x)));
        out.push((names::layer(l, "z"), Array::f32(&shape, vals(z))));
        out.push((names::layer(l, "logdet"), Array::f32(&[batch], vals(ld))));
        out.push((names::layer(l, "cond"), Array::f32(&[batch, c.width(l)], vals(conds[l].clone()))));
        let u = noise.sample_f32(batch * tokens * width);
        let ut = Tensor::<3>::from_data(TensorData::new(u.clone(), shape), &device);
        let mut caches = vec![KvCache::default(); layer.depth(&model.shared_backbone)];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for n in 0..tokens {
            let tok = ut.clone().narrow(1, n, 1).reshape([batch, width]);
            let (an, bn) = layer.step(tok, n, &conds[l], &model.shared_backbone, &mut caches, None);
            a.extend(vals(an));
            b.extend(vals(bn));
        }
        out.push((names::layer(l, "u"), Array::f32(&shape, u)));
        out.push((names::layer(l, "a"), Array::f32(&[tokens, batch, width], a)));
        out.push((names::layer(l, "b"), Array::f32(&[tokens, batch, width], b)));
    }
    let s = c.img_size;
    let shape = [batch, c.in_channels, s, s];
    let x: Vec<f32> = noise.sample_f32(batch * c.in_channels * s * s).iter().map(|v| v * 0.5).collect();
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device);
    let (score, logp) = model.score(xt, t_tensor, &y);
    out.push((names::SCORE_X.to_string(), Array::f32(&shape, x)));
    out.push((names::SCORE.to_string(), Array::f32(&shape, vals(score))));
    out.push((names::LOGP.to_string(), Array::f32(&[batch], vals(logp))));
    out
}

/// Checks every graph of the package in `dir` against its reference outputs with tract and,
/// when its library is found, ONNX Runtime on CPU (skipped with the reason otherwise).
pub fn check_package(dir: &Path) -> Result<CheckReport, itarflow_rt::RtError> {
    let model = Arc::new(Model::load(dir)?);
    let reference = itarflow_rt::check::package_reference(&model)?;
    itarflow_rt::check::check(model, &reference, &[Provider::Tract, Provider::Cpu], &ProviderOptions::default())
}

//! The npz inputs of the commands as Burn tensors: the checks themselves are shared with
//! `itarflow-rt` in [`itarflow_base::inputs`].

use anyhow::Result;
use burn::prelude::*;
use itarflow::{ITarFlow, Labels, ModelConfig};
use itarflow_base::Npz;
use itarflow_base::inputs as base;

pub use base::positive;

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), &itarflow::default_device())
}

/// Images `name` (B, C, H, W) of the model's channels and size.
pub fn images(npz: &Npz, name: &str, c: &ModelConfig) -> Result<Tensor<4>> {
    let (shape, data) = base::images(npz, name, c)?;
    Ok(tensor(data, shape))
}

/// Noise levels `t` (B,) or (B, 1), each > 0.
pub fn noise_levels(npz: &Npz, batch: usize) -> Result<Tensor<1>> {
    Ok(tensor(base::noise_levels(npz, batch)?, [batch]))
}

/// Labels as the model takes them (None for an unconditional model).
pub fn as_labels(y: Vec<i64>, num_classes: usize) -> Labels {
    if num_classes == 0 { Labels::None } else { Labels::Classes(y) }
}

/// Optional labels `y` (B,): classes in 0..K, or -1 for unconditional.
pub fn labels(npz: &Npz, batch: usize, model: &ITarFlow) -> Result<Labels> {
    Ok(match base::labels(npz, batch, model.config.num_classes)? {
        Some(y) => as_labels(y, model.config.num_classes),
        None => Labels::None,
    })
}

/// Fails if any value is NaN or infinite, naming what was computed.
pub fn ensure_finite<const D: usize>(t: &Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let v = t.try_to_vec_as::<f32>().map_err(|e| anyhow::anyhow!("reading {what}: {e:?}"))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        anyhow::bail!("{what} has a non-finite value ({}) at flat index {i}: the model diverged on this input", v[i]);
    }
    Ok(v)
}

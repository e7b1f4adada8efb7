//! Reading and checking the arrays the commands take from npz files: images, noise levels,
//! labels and prior noise, each refused with a message naming the file, the array and the fix.

use anyhow::{Result, bail};
use burn::prelude::*;
use itarflow::{ITarFlow, Labels, ModelConfig};
use itarflow_base::Npz;

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), &itarflow::default_device())
}

fn check_finite(npz: &Npz, name: &str, data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("array '{name}' in {} has a non-finite value ({}) at flat index {i}", npz.path().display(), data[i]);
    }
    Ok(())
}

/// Images `name` (B, C, H, W) of the model's channels and size.
pub fn images(npz: &Npz, name: &str, c: &ModelConfig) -> Result<Tensor<4>> {
    let expected = format!("(B, {}, {}, {})", c.in_channels, c.img_size, c.img_size);
    let (shape, data) = npz.f32(name, 4, &expected, "the images, float32 (B, C, H, W)")?;
    if shape[1..] != [c.in_channels, c.img_size, c.img_size] || shape[0] == 0 {
        bail!("array '{name}' in {} has shape {shape:?}; this model takes {expected}", npz.path().display());
    }
    check_finite(npz, name, &data)?;
    Ok(tensor(data, [shape[0], shape[1], shape[2], shape[3]]))
}

/// Noise levels `t` (B,) or (B, 1), each > 0.
pub fn noise_levels(npz: &Npz, batch: usize) -> Result<Tensor<1>> {
    let hint = "the noise level of each image, float32 (B,)";
    let rank = npz.require("t", hint)?.shape.len();
    let (shape, data) = npz.f32("t", rank.clamp(1, 2), "(B,)", hint)?;
    if data.len() != batch || (shape.len() == 2 && shape[1] != 1) {
        bail!("array 't' in {} has shape {shape:?}; expected ({batch},), one noise level per image", npz.path().display());
    }
    check_finite(npz, "t", &data)?;
    if let Some(i) = data.iter().position(|&t| t <= 0.0) {
        bail!("array 't' in {} has t = {} at index {i}; noise levels must be > 0 (log t conditions the model)", npz.path().display(), data[i]);
    }
    Ok(tensor(data, [batch]))
}

/// Optional labels `y` (B,): classes in 0..K, or -1 for unconditional.
pub fn labels(npz: &Npz, batch: usize, model: &ITarFlow) -> Result<Labels> {
    if npz.get("y").is_none() {
        return Ok(Labels::None);
    }
    let (_, y) = npz.i64("y", 1, "(B,)", "")?;
    class_labels(y, batch, model.config.num_classes, &format!("array 'y' in {}", npz.path().display()))
}

/// Checks labels against the model: count, range, and a conditional model.
pub fn class_labels(y: Vec<i64>, batch: usize, num_classes: usize, what: &str) -> Result<Labels> {
    if y.len() != batch {
        bail!("{what} has {} labels for {batch} images", y.len());
    }
    if num_classes == 0 {
        if y.iter().any(|&v| v >= 0) {
            bail!("{what} gives class labels, but the model is unconditional; drop them");
        }
        return Ok(Labels::None);
    }
    if let Some(&bad) = y.iter().find(|&&v| v >= num_classes as i64 || v < -1) {
        bail!("{what} has label {bad}; this model has classes 0..{} (and -1 for unconditional)", num_classes - 1);
    }
    Ok(Labels::Classes(y))
}

/// Checks a noise level given on the command line.
pub fn positive(name: &str, v: f64) -> Result<f64> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{name} must be a positive noise level, got {v}");
    }
    Ok(v)
}

/// Fails if any value is NaN or infinite, naming what was computed.
pub fn ensure_finite<const D: usize>(t: &Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let v = t.try_to_vec_as::<f32>().map_err(|e| anyhow::anyhow!("reading {what}: {e:?}"))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what} has a non-finite value ({}) at flat index {i}: the model diverged on this input", v[i]);
    }
    Ok(v)
}

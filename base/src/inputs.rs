//! Reading and checking the arrays that commands take from npz files (images, noise levels,
//! labels, prior noise) against a model, each refused with a message naming the file, the array
//! and the fix. Shared by `itarflow` and `itarflow-rt`.

use thiserror::Error;

use crate::config::ModelConfig;
use crate::npz::{Npz, NpzError};

#[derive(Debug, Error)]
pub enum InputError {
    #[error(transparent)]
    Npz(#[from] NpzError),
    #[error("{0}")]
    Invalid(String),
}

fn bad(msg: String) -> InputError {
    InputError::Invalid(msg)
}

fn check_finite(npz: &Npz, name: &str, data: &[f32]) -> Result<(), InputError> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(bad(format!("array '{name}' in {} has a non-finite value ({}) at flat index {i}", npz.path().display(), data[i]))),
        None => Ok(()),
    }
}

/// Images `name` (B, C, H, W) of the model's channels and size: (shape, values).
pub fn images(npz: &Npz, name: &str, c: &ModelConfig) -> Result<([usize; 4], Vec<f32>), InputError> {
    let expected = format!("(B, {}, {}, {})", c.in_channels, c.img_size, c.img_size);
    let (shape, data) = npz.f32(name, 4, &expected, "the images, float32 (B, C, H, W)")?;
    if shape[1..] != [c.in_channels, c.img_size, c.img_size] || shape[0] == 0 {
        return Err(bad(format!("array '{name}' in {} has shape {shape:?}; this model takes {expected}", npz.path().display())));
    }
    check_finite(npz, name, &data)?;
    Ok(([shape[0], shape[1], shape[2], shape[3]], data))
}

/// Noise levels `t` (B,) or (B, 1), each finite and > 0.
pub fn noise_levels(npz: &Npz, batch: usize) -> Result<Vec<f32>, InputError> {
    let hint = "the noise level of each image, float32 (B,)";
    let rank = npz.require("t", hint)?.shape.len();
    let (shape, data) = npz.f32("t", rank.clamp(1, 2), "(B,)", hint)?;
    if data.len() != batch || (shape.len() == 2 && shape[1] != 1) {
        return Err(bad(format!(
            "array 't' in {} has shape {shape:?}; expected ({batch},), one noise level per image",
            npz.path().display()
        )));
    }
    check_finite(npz, "t", &data)?;
    if let Some(i) = data.iter().position(|&t| t <= 0.0) {
        return Err(bad(format!(
            "array 't' in {} has t = {} at index {i}; noise levels must be > 0 (log t conditions the model)",
            npz.path().display(),
            data[i]
        )));
    }
    Ok(data)
}

/// Checks labels against the model: count, range (classes 0..K, -1 = unconditional), and no
/// class labels for an unconditional model. `what` names their origin in messages.
pub fn check_labels(y: &[i64], batch: usize, num_classes: usize, what: &str) -> Result<(), InputError> {
    if y.len() != batch {
        return Err(bad(format!("{what} has {} labels for {batch} images", y.len())));
    }
    if num_classes == 0 {
        if y.iter().any(|&v| v >= 0) {
            return Err(bad(format!("{what} gives class labels, but the model is unconditional; drop them")));
        }
        return Ok(());
    }
    if let Some(&bad_label) = y.iter().find(|&&v| v >= num_classes as i64 || v < -1) {
        return Err(bad(format!("{what} has label {bad_label}; this model has classes 0..{} (and -1 for unconditional)", num_classes - 1)));
    }
    Ok(())
}

/// Optional labels `y` (B,), checked; None when the npz has none.
pub fn labels(npz: &Npz, batch: usize, num_classes: usize) -> Result<Option<Vec<i64>>, InputError> {
    if npz.get("y").is_none() {
        return Ok(None);
    }
    let (_, y) = npz.i64("y", 1, "(B,)", "")?;
    check_labels(&y, batch, num_classes, &format!("array 'y' in {}", npz.path().display()))?;
    Ok(Some(y))
}

/// Prior noise `z` (B, T, c) of the last layer's `tokens` x `token_dim`: (batch, values).
pub fn prior_noise(npz: &Npz, tokens: usize, token_dim: usize) -> Result<(usize, Vec<f32>), InputError> {
    let expected = format!("(B, {tokens}, {token_dim})");
    let (shape, z) = npz.f32("z", 3, &expected, "the prior noise, float32 (B, T, c)")?;
    if shape[1..] != [tokens, token_dim] || shape[0] == 0 {
        return Err(bad(format!("array 'z' in {} has shape {shape:?}; this model's prior noise is {expected}", npz.path().display())));
    }
    check_finite(npz, "z", &z)?;
    Ok((shape[0], z))
}

/// The labels of `b` images: `y` when given, else every image of `class`, else random classes
/// drawn from `seed` (conditional model), else unconditional (-1); checked, `what` naming their
/// origin in the error.
pub fn choose_labels(
    y: Option<Vec<i64>>,
    class: Option<i64>,
    b: usize,
    seed: u64,
    num_classes: usize,
    what: &str,
) -> Result<Vec<i64>, InputError> {
    let labels = match (y, class) {
        (Some(y), _) => y,
        (None, Some(k)) => vec![k; b],
        (None, None) if num_classes > 0 => crate::noise::random_labels(seed, b, num_classes),
        (None, None) => vec![-1; b],
    };
    check_labels(&labels, b, num_classes, what)?;
    Ok(labels)
}

/// Checks a noise level given on the command line.
pub fn positive(name: &str, v: f64) -> Result<f64, InputError> {
    if !(v > 0.0 && v.is_finite()) {
        return Err(bad(format!("{name} must be a positive noise level, got {v}")));
    }
    Ok(v)
}

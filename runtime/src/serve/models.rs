//! The three models a server exposes for one package: `{name}` (the sampler), `{name}-score` and
//! `{name}-denoise`; their metadata, and their requests checked and turned into work.

use serde::Serialize;

use super::protocol::{DataType, Refusal, Request, Tensor, Values};
use crate::model::{Model, SERVED_MODEL_SUFFIXES};
use crate::sampler::SampleSettings;

/// Which model a name designates (in the order of [`SERVED_MODEL_SUFFIXES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Sample,
    Score,
    Denoise,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Sample, Kind::Score, Kind::Denoise];

    /// The model's name for a server named `base`.
    pub fn model_name(self, base: &str) -> String {
        format!("{base}{}", SERVED_MODEL_SUFFIXES[self as usize])
    }
}

/// Limits on what one request may ask.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_images: usize,
    pub max_denoise_steps: usize,
}

/// A checked sampling request: its prior noise, labels and settings.
#[derive(Debug, Clone)]
pub struct SampleJob {
    pub z: Vec<f32>,
    pub labels: Vec<i64>,
    pub settings: SampleSettings,
}

/// A checked score or denoising request.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub x: Vec<f32>,
    pub t: Vec<f32>,
    pub labels: Vec<i64>,
}

/// A model's input or output as its metadata lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: DataType,
    /// -1: any size.
    pub shape: Vec<i64>,
    /// A request may leave it out (an input; the protocol's metadata does not say so, Triton's
    /// model configuration does).
    #[serde(skip)]
    pub optional: bool,
}

/// A model's metadata (`GET /v2/models/{name}`, gRPC `ModelMetadata`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub name: String,
    pub versions: Vec<&'static str>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

fn spec(name: &'static str, datatype: DataType, shape: &[i64]) -> TensorMeta {
    TensorMeta { name, datatype, shape: shape.to_vec(), optional: false }
}

fn optional(name: &'static str, datatype: DataType, shape: &[i64]) -> TensorMeta {
    TensorMeta { optional: true, ..spec(name, datatype, shape) }
}

/// A model's inputs and outputs with datatypes and shapes (-1: any size).
pub fn metadata(model: &Model, base: &str, kind: Kind) -> Metadata {
    let c = &model.manifest.model;
    let image = [-1, c.in_channels as i64, c.img_size as i64, c.img_size as i64];
    let (inputs, outputs) = match kind {
        Kind::Sample => (
            vec![
                spec("class", DataType::Int64, &[-1]),
                optional("seed", DataType::Int64, &[-1]),
                optional("cfg", DataType::Fp32, &[1]),
                optional("denoise_steps", DataType::Int32, &[1]),
            ],
            vec![spec("images", DataType::Fp32, &image)],
        ),
        Kind::Score => (
            vec![spec("x", DataType::Fp32, &image), spec("t", DataType::Fp32, &[-1]), optional("y", DataType::Int64, &[-1])],
            vec![spec("score", DataType::Fp32, &image), spec("logp", DataType::Fp32, &[-1])],
        ),
        Kind::Denoise => {
            (vec![spec("x", DataType::Fp32, &image), optional("y", DataType::Int64, &[-1])], vec![spec("images", DataType::Fp32, &image)])
        }
    };
    Metadata { name: kind.model_name(base), versions: vec!["1"], platform: "itarflow", inputs, outputs }
}

fn typed<'a>(t: &'a Tensor, datatype: DataType, shape_ok: bool, expected: &str) -> Result<&'a Values, Refusal> {
    if t.datatype != datatype {
        return Err(Refusal::bad(format!("input '{}' has datatype {}; the model takes {}", t.name, t.datatype.name(), datatype.name())));
    }
    if !shape_ok {
        return Err(Refusal::bad(format!("input '{}' has shape {:?}; the model takes {expected}", t.name, t.shape)));
    }
    Ok(&t.values)
}

fn ints(v: &Values) -> &[i64] {
    match v {
        Values::I64(v) => v,
        Values::F32(_) => &[],
    }
}

fn floats(v: &Values) -> &[f32] {
    match v {
        Values::F32(v) => v,
        Values::I64(_) => &[],
    }
}

fn unknown_inputs(req: &Request, known: &[&str]) -> Result<(), Refusal> {
    match req.inputs.iter().find(|t| !known.contains(&t.name.as_str())) {
        Some(t) => Err(Refusal::bad(format!("unknown input '{}' (the model takes {known:?})", t.name))),
        None => Ok(()),
    }
}

fn labels(model: &Model, t: Option<&Tensor>, b: usize, name: &str) -> Result<Vec<i64>, Refusal> {
    let Some(t) = t else { return Ok(vec![-1; b]) };
    let y = ints(typed(t, DataType::Int64, t.shape == [b], &format!("[{b}]"))?).to_vec();
    let k = model.num_classes() as i64;
    if let Some(bad) = y.iter().find(|&&v| v < -1 || v >= k) {
        return Err(Refusal::bad(format!("{name} {bad} is out of range: the model has {k} classes (0..{k}, or -1 for unconditional)")));
    }
    Ok(y)
}

/// Checks a sampling request against the model and `limits`; `fresh_seed` supplies the seed of
/// a request that gives none.
pub fn sample_job(
    model: &Model,
    defaults: &SampleSettings,
    req: &Request,
    limits: RequestLimits,
    fresh_seed: u64,
) -> Result<SampleJob, Refusal> {
    unknown_inputs(req, &["class", "seed", "cfg", "denoise_steps"])?;
    let class =
        req.input("class").ok_or_else(|| Refusal::bad("missing input 'class' (INT64 [B]: one class per image, -1 for unconditional)"))?;
    if class.shape.len() != 1 {
        return Err(Refusal::bad(format!("input 'class' has shape {:?}; the model takes [B]", class.shape)));
    }
    let b = class.shape[0];
    if b == 0 || b > limits.max_images {
        return Err(Refusal::bad(format!("{b} images asked; a request may ask 1 to {}", limits.max_images)));
    }
    let labels = labels(model, Some(class), b, "class")?;
    let per = model.noise_len();
    let z = match req.input("seed") {
        None => itarflow_base::prior_noise(fresh_seed, b * per),
        Some(t) => {
            let seeds = ints(typed(t, DataType::Int64, t.shape == [1] || t.shape == [b], &format!("[1] or [{b}]"))?);
            if seeds.len() == 1 {
                // As `itarflow-rt sample --seed S`: the batch's noise from one stream.
                itarflow_base::prior_noise(seeds[0] as u64, b * per)
            } else {
                seeds.iter().flat_map(|&s| itarflow_base::prior_noise(s as u64, per)).collect()
            }
        }
    };
    let mut settings = *defaults;
    if let Some(t) = req.input("cfg") {
        let w = floats(typed(t, DataType::Fp32, t.shape == [1], "[1]")?)[0];
        if !(w.is_finite() && w >= 0.0) {
            return Err(Refusal::bad(format!("cfg {w} must be finite and >= 0")));
        }
        if w > 0.0 && model.num_classes() == 0 {
            return Err(Refusal::bad("cfg needs a class-conditional model; this one is unconditional"));
        }
        settings.guidance.scale = w as f64;
    }
    if let Some(t) = req.input("denoise_steps") {
        let k = ints(typed(t, DataType::Int32, t.shape == [1], "[1]")?)[0];
        if k < 0 || k as usize > limits.max_denoise_steps {
            return Err(Refusal::bad(format!("denoise_steps {k} must be in 0..={}", limits.max_denoise_steps)));
        }
        settings.denoise_steps = k as usize;
    }
    Ok(SampleJob { z, labels, settings })
}

/// Checks a score (`with_t`) or denoising request: images x (B, C, H, W), finite; for the score,
/// noise levels t (B,) > 0; optional labels y (B,).
pub fn image_job(model: &Model, req: &Request, limits: RequestLimits, with_t: bool) -> Result<ImageJob, Refusal> {
    let known: &[&str] = if with_t { &["x", "t", "y"] } else { &["x", "y"] };
    unknown_inputs(req, known)?;
    let c = &model.manifest.model;
    let x = req.input("x").ok_or_else(|| Refusal::bad("missing input 'x' (FP32 [B, C, H, W] images)"))?;
    let want = [c.in_channels, c.img_size, c.img_size];
    let shape_ok = x.shape.len() == 4 && x.shape[1..] == want;
    let xs = floats(typed(x, DataType::Fp32, shape_ok, &format!("[B, {}, {}, {}]", want[0], want[1], want[2]))?).to_vec();
    let b = x.shape[0];
    if b == 0 || b > limits.max_images {
        return Err(Refusal::bad(format!("{b} images sent; a request may send 1 to {}", limits.max_images)));
    }
    if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
        return Err(Refusal::bad(format!("input 'x' holds a NaN or Inf (image {})", i / (want.iter().product::<usize>()))));
    }
    let t = if with_t {
        let t = req.input("t").ok_or_else(|| Refusal::bad("missing input 't' (FP32 [B] noise levels)"))?;
        let t = floats(typed(t, DataType::Fp32, t.shape == [b], &format!("[{b}]"))?).to_vec();
        if let Some(bad) = t.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Refusal::bad(format!("noise level {bad} must be finite and > 0")));
        }
        t
    } else {
        Vec::new()
    };
    Ok(ImageJob { x: xs, t, labels: labels(model, req.input("y"), b, "label")? })
}

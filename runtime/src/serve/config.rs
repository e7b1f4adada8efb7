//! Triton's model configuration extension (REST `GET /v2/models/{name}/config`, gRPC
//! `ModelConfig`; Triton clients' `get_model_config`, which Triton's tools read before they send
//! anything): each model's inputs and outputs in the terms of Triton's model_config.proto, where
//! it runs, and this server's settings for it as the configuration's string parameters.
//!
//! `max_batch_size` is 0, Triton's word for "shapes are given whole": Triton's batching
//! dimension is not how these models batch (a sampling request's `cfg`, `denoise_steps` and a
//! single `seed` hold for all its images), so every shape is listed in full, -1 for a count of
//! images. How this server merges requests into runs is in the parameters (`max_batch`,
//! `max_queue_delay_ms`, `max_queue`, `pad_batches`), beside the request limits and the
//! sampler's defaults.

use std::collections::BTreeMap;

use serde::Serialize;

use super::models::{self, Kind, TensorMeta};
use super::package::Package;
use super::protocol::DataType;
use super::state::AppState;
use crate::sampler::CfgStyle;

/// A model's configuration: the fields of Triton's `ModelConfig` this server fills.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    /// 0: no batching dimension (shapes are given whole).
    pub max_batch_size: i32,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
    pub instance_group: Vec<InstanceGroup>,
    /// The server's settings for the model, by name (Triton's `ModelParameter`: a string each).
    pub parameters: BTreeMap<&'static str, Parameter>,
}

/// Triton's `ModelInput` or `ModelOutput`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigTensor {
    pub name: &'static str,
    /// Written as Triton's `DataType` name (`TYPE_FP32`).
    #[serde(serialize_with = "triton_type")]
    pub data_type: DataType,
    /// -1: any size.
    pub dims: Vec<i64>,
    /// Inputs: whether a request may leave it out (outputs have no such field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Triton's `ModelInstanceGroup`: the model's copies and where they run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceGroup {
    pub name: String,
    pub kind: InstanceKind,
    pub count: i32,
}

/// Triton's `ModelInstanceGroup.Kind`: where a model's copies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InstanceKind {
    #[serde(rename = "KIND_GPU")]
    Gpu,
    #[serde(rename = "KIND_CPU")]
    Cpu,
}

impl InstanceKind {
    /// Its number in model_config.proto.
    pub fn number(self) -> i32 {
        match self {
            InstanceKind::Gpu => 1,
            InstanceKind::Cpu => 2,
        }
    }
}

/// Triton's `ModelParameter`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parameter {
    pub string_value: String,
}

fn triton_type<S: serde::Serializer>(t: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.triton().0)
}

fn tensors(list: Vec<TensorMeta>, inputs: bool) -> Vec<ConfigTensor> {
    list.into_iter()
        .map(|t| ConfigTensor { name: t.name, data_type: t.datatype, dims: t.shape, optional: inputs.then_some(t.optional) })
        .collect()
}

/// The configuration of the model `kind` of the package `p` on the server `s`.
pub fn model_config(s: &AppState, p: &Package, kind: Kind) -> ModelConfig {
    let sampler = &p.sampler;
    let meta = models::metadata(sampler.model(), &p.name, kind);
    let settings = sampler.settings();
    let mut params: Vec<(&'static str, String)> = vec![
        ("provider", sampler.provider().name().into()),
        ("precision", sampler.precision().name().into()),
        ("max_images", s.limits.max_images.to_string()),
    ];
    let opts = &p.batcher.opts;
    let image_runs = [("max_image_runs", opts.max_image_runs.to_string()), ("max_queue", opts.max_queue.to_string())];
    let denoising = [
        ("denoise_steps", settings.denoise_steps.to_string()),
        ("t_max", settings.t_max.to_string()),
        ("t_min", settings.t_min.to_string()),
    ];
    match kind {
        Kind::Sample => {
            let style = match settings.guidance.style {
                CfgStyle::Tarflow => "tarflow",
                CfgStyle::Starflow => "starflow",
            };
            params.extend([
                ("max_batch", p.batcher.opts.max_batch.to_string()),
                ("max_queue_delay_ms", p.batcher.opts.max_delay.as_millis().to_string()),
                ("max_queue", p.batcher.opts.max_queue.to_string()),
                ("pad_batches", p.batcher.opts.pad.to_string()),
                ("cfg", settings.guidance.scale.to_string()),
                ("cfg_style", style.into()),
                ("max_denoise_steps", s.limits.max_denoise_steps.to_string()),
            ]);
            params.extend(denoising);
        }
        Kind::Denoise => {
            params.extend(denoising);
            params.extend(image_runs);
        }
        Kind::Score => params.extend(image_runs),
    }
    let kind = if sampler.provider().is_gpu() { InstanceKind::Gpu } else { InstanceKind::Cpu };
    ModelConfig {
        instance_group: vec![InstanceGroup { name: meta.name.clone(), kind, count: 1 }],
        name: meta.name,
        platform: meta.platform,
        backend: "itarflow-rt",
        max_batch_size: 0,
        input: tensors(meta.inputs, true),
        output: tensors(meta.outputs, false),
        parameters: params.into_iter().map(|(k, v)| (k, Parameter { string_value: v })).collect(),
    }
}

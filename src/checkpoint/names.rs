//! The reference's parameter names, and the conversion between them and the Burn model.
//!
//! Names and layouts are those of a PyTorch `state_dict` of `transformer_flow.Model`: Linear
//! weights are (out, in) (Burn keeps (in, out), so they are transposed here), class embeddings are
//! (K, 1, C), `attn_mask` buffers are written for strict loading by the reference and ignored on
//! reading. Legacy `attn_blocks` names read as `head_blocks`; the per-layer copies of a shared
//! backbone (`blocks.{l}.shared_backbone.*`) are ignored in favour of `shared_backbone.*`.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;

use super::CheckpointError;
use super::tensors::{NamedTensors, RawTensor};
use crate::config::ModelConfig;
use crate::model::{FlowLayer, ITarFlow};
use crate::nn::{Attention, Mlp, TimeEmbed, TransformerBlock, layer_norm};

fn raw<const D: usize>(t: Tensor<D>) -> RawTensor {
    let shape = t.dims().to_vec();
    let data = t.try_into_vec_as::<f32>().expect("model tensors are f32");
    RawTensor { shape, data }
}

fn push_linear(out: &mut Vec<(String, RawTensor)>, name: &str, l: &Linear) {
    out.push((format!("{name}.weight"), raw(l.weight.val().transpose())));
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), raw(b.val())));
    }
}

fn push_norm(out: &mut Vec<(String, RawTensor)>, name: &str, n: &LayerNorm) {
    out.push((format!("{name}.weight"), raw(n.gamma.val())));
    if let Some(b) = &n.beta {
        out.push((format!("{name}.bias"), raw(b.val())));
    }
}

fn push_block(out: &mut Vec<(String, RawTensor)>, name: &str, b: &TransformerBlock) {
    push_norm(out, &format!("{name}.attention.norm"), &b.attention.norm);
    push_linear(out, &format!("{name}.attention.qkv"), &b.attention.qkv);
    push_linear(out, &format!("{name}.attention.proj"), &b.attention.proj);
    push_norm(out, &format!("{name}.mlp.norm"), &b.mlp.norm);
    push_linear(out, &format!("{name}.mlp.main.0"), &b.mlp.fc1);
    push_linear(out, &format!("{name}.mlp.main.2"), &b.mlp.fc2);
}

/// Every tensor of `model` under its reference name, in the reference's layout.
pub fn to_named(model: &ITarFlow) -> Vec<(String, RawTensor)> {
    let mut out = Vec::new();
    out.push(("var".to_string(), raw(model.var.clone())));
    for (k, block) in model.shared_backbone.iter().enumerate() {
        push_block(&mut out, &format!("shared_backbone.{k}"), block);
    }
    for (l, layer) in model.layers.iter().enumerate() {
        let p = format!("blocks.{l}");
        let [t, width] = layer.pos_embed.dims();
        out.push((format!("{p}.pos_embed"), raw(layer.pos_embed.val())));
        if let Some(ce) = &layer.class_embed {
            let [k, c] = ce.dims();
            out.push((format!("{p}.class_embed"), raw(ce.val().reshape([k, 1, c]))));
        }
        let mask: Vec<f32> = (0..t * t).map(|n| if n % t <= n / t { 1.0 } else { 0.0 }).collect();
        out.push((format!("{p}.attn_mask"), RawTensor { shape: vec![t, t], data: mask }));
        push_linear(&mut out, &format!("{p}.proj_in"), &layer.proj_in);
        for (k, block) in layer.blocks.iter().enumerate() {
            push_block(&mut out, &format!("{p}.head_blocks.{k}"), block);
        }
        push_linear(&mut out, &format!("{p}.proj_out"), &layer.proj_out);
        push_linear(&mut out, &format!("{p}.time_embed.mlp.0"), &layer.time_embed.fc1);
        push_linear(&mut out, &format!("{p}.time_embed.mlp.2"), &layer.time_embed.fc2);
        debug_assert_eq!(width, layer.time_embed.width);
    }
    out
}

/// Takes tensors out of a checkpoint by name, checking each shape; what is left at the end is
/// reported as unexpected.
struct Taker<'a> {
    source: &'a NamedTensors,
    left: BTreeMap<String, RawTensor>,
    device: &'a Device,
}

impl Taker<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let t = self.left.remove(name).ok_or_else(|| CheckpointError::MissingTensor {
            path: self.source.path.clone(),
            name: name.into(),
            expected: shape.to_vec(),
        })?;
        if t.shape != shape {
            return Err(CheckpointError::TensorShape {
                path: self.source.path.clone(),
                name: name.into(),
                found: t.shape,
                expected: shape.to_vec(),
            });
        }
        Ok(t.data)
    }

    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, CheckpointError> {
        let data = self.take(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(data, shape), self.device))
    }

    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>, CheckpointError> {
        Ok(Param::from_tensor(self.tensor(name, shape)?))
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear, CheckpointError> {
        let w: Tensor<2> = self.tensor(&format!("{name}.weight"), [d_out, d_in])?;
        Ok(Linear { weight: Param::from_tensor(w.transpose()), bias: Some(self.param(&format!("{name}.bias"), [d_out])?) })
    }

    fn norm(&mut self, name: &str, width: usize) -> Result<LayerNorm, CheckpointError> {
        let mut n = layer_norm(width, self.device);
        n.gamma = self.param(&format!("{name}.weight"), [width])?;
        n.beta = Some(self.param(&format!("{name}.bias"), [width])?);
        Ok(n)
    }

    fn block(&mut self, name: &str, width: usize, c: &ModelConfig) -> Result<TransformerBlock, CheckpointError> {
        let e = width * c.expansion;
        Ok(TransformerBlock {
            attention: Attention {
                norm: self.norm(&format!("{name}.attention.norm"), width)?,
                qkv: self.linear(&format!("{name}.attention.qkv"), width, 3 * width)?,
                proj: self.linear(&format!("{name}.attention.proj"), width, width)?,
                heads: width / c.head_dim,
                head_dim: c.head_dim,
            },
            mlp: Mlp {
                norm: self.norm(&format!("{name}.mlp.norm"), width)?,
                fc1: self.linear(&format!("{name}.mlp.main.0"), width, e)?,
                fc2: self.linear(&format!("{name}.mlp.main.2"), e, width)?,
            },
        })
    }
}

/// Canonical name of a checkpoint key: legacy `attn_blocks` become `head_blocks`.
pub fn canonical_name(name: &str) -> String {
    name.replace(".attn_blocks.", ".head_blocks.")
}

/// Whether a key is a buffer or duplicate the model does not load.
fn ignored(name: &str) -> bool {
    name.ends_with(".attn_mask") || (name.starts_with("blocks.") && name.contains(".shared_backbone."))
}

/// Builds the model of shape `config` from `source`, checking that every tensor is present with
/// the right shape and that nothing is left over.
pub fn from_named(source: &NamedTensors, config: &ModelConfig, device: &Device) -> Result<ITarFlow, CheckpointError> {
    config.validate().map_err(|e| CheckpointError::Config { path: source.path.clone(), reason: e.to_string() })?;
    let left = source.tensors.iter().map(|(k, v)| (canonical_name(k), v.clone())).filter(|(k, _)| !ignored(k)).collect();
    let mut take = Taker { source, left, device };
    let c = config;
    let shared =
        (0..c.shared_backbone_blocks).map(|k| take.block(&format!("shared_backbone.{k}"), c.width(0), c)).collect::<Result<Vec<_>, _>>()?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let p = format!("blocks.{l}");
        let (w, tok, t) = (c.width(l), c.token_dim(l), c.tokens(l));
        let out_dim = if c.affine { 2 * tok } else { tok };
        let class_embed = if c.num_classes > 0 {
            let ce: Tensor<3> = take.tensor(&format!("{p}.class_embed"), [c.num_classes, 1, w])?;
            Some(Param::from_tensor(ce.reshape([c.num_classes, w])))
        } else {
            None
        };
        layers.push(FlowLayer {
            proj_in: take.linear(&format!("{p}.proj_in"), tok, w)?,
            pos_embed: take.param(&format!("{p}.pos_embed"), [t, w])?,
            class_embed,
            blocks: (0..c.own_blocks(l)).map(|k| take.block(&format!("{p}.head_blocks.{k}"), w, c)).collect::<Result<Vec<_>, _>>()?,
            proj_out: take.linear(&format!("{p}.proj_out"), w, out_dim)?,
            time_embed: TimeEmbed {
                fc1: take.linear(&format!("{p}.time_embed.mlp.0"), w, 4 * w)?,
                fc2: take.linear(&format!("{p}.time_embed.mlp.2"), 4 * w, w)?,
                width: w,
            },
            flip: l % 2 == 1,
            affine: c.affine,
            token_dim: tok,
        });
    }
    let last = c.num_layers - 1;
    let var = take.tensor("var", [c.tokens(last), c.token_dim(last)])?;
    if let Some((name, t)) = take.left.iter().next() {
        return Err(CheckpointError::UnexpectedTensor {
            path: source.path.clone(),
            name: name.clone(),
            shape: t.shape.clone(),
            count: take.left.len(),
        });
    }
    Ok(ITarFlow { layers, shared_backbone: shared, var, config: config.clone() })
}

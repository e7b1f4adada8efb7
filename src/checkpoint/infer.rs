//! Inferring a model config from the tensor shapes of a checkpoint that carries none (such as a
//! reference PyTorch state_dict).
//!
//! Shapes give the layers, widths, blocks, classes, token counts T and token widths c = C p^2.
//! They cannot tell the image channels C from the patch size p (a token of width 4 is 1 channel in
//! 2x2 patches or 4 channels in 1x1 patches): without `--in-channels` or `--img-size`, the grey
//! (1) and RGB (3) readings are tried, and a checkpoint that fits neither or both is an error that
//! names the flags. The head width is not in the shapes either (64, as in the reference, unless
//! `--head-dim` says otherwise).

use std::collections::BTreeSet;

use super::CheckpointError;
use super::names::canonical_name;
use super::tensors::NamedTensors;
use crate::config::ModelConfig;

/// What the user tells about a checkpoint beyond its shapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    pub in_channels: Option<usize>,
    pub img_size: Option<usize>,
    pub head_dim: Option<usize>,
    pub input_scale: Option<f64>,
    pub t_min: Option<f64>,
    pub t_max: Option<f64>,
}

fn isqrt_exact(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n).then_some(r)
}

/// The reference's training t_max for an image size (0.3 / 0.5 / 0.7 at 64 / 128 / 256 px).
pub fn default_t_max(img_size: usize) -> f64 {
    match img_size {
        0..=64 => 0.3,
        65..=128 => 0.5,
        _ => 0.7,
    }
}

/// Image channels, patch sizes and image size for per-layer (T, c), given what the user said.
fn geometry(
    path: &std::path::Path,
    layers: &[(usize, usize)],
    opts: &ImportOptions,
) -> Result<(usize, Vec<usize>, usize), CheckpointError> {
    let err = |reason: String| CheckpointError::Config { path: path.into(), reason };
    let grids = layers
        .iter()
        .map(|&(t, _)| isqrt_exact(t).ok_or_else(|| err(format!("{t} tokens is not a square grid of patches"))))
        .collect::<Result<Vec<_>, _>>()?;
    // Patch sizes and image size for a channel count, if consistent.
    let fit = |ch: usize| -> Option<(Vec<usize>, usize)> {
        let patches = layers.iter().map(|&(_, c)| if c % ch == 0 { isqrt_exact(c / ch) } else { None }).collect::<Option<Vec<_>>>()?;
        let img = grids[0] * patches[0];
        grids.iter().zip(&patches).all(|(g, p)| g * p == img).then_some((patches, img))
    };
    if let Some(ch) = opts.in_channels {
        let (patches, img) =
            fit(ch).ok_or_else(|| err(format!("token widths {:?} do not split into {ch} channel(s) times a square patch", layers)))?;
        if let Some(s) = opts.img_size
            && s != img
        {
            return Err(err(format!("--in-channels {ch} implies img_size {img}, but --img-size {s} was given")));
        }
        return Ok((ch, patches, img));
    }
    if let Some(s) = opts.img_size {
        let ch = grids.iter().zip(layers).map(|(g, &(_, c))| {
            let p = s / g;
            (s % g == 0 && c % (p * p) == 0).then(|| c / (p * p))
        });
        let chs = ch.collect::<Option<BTreeSet<_>>>();
        return match chs {
            Some(set) if set.len() == 1 => {
                let ch = *set.iter().next().unwrap();
                let (patches, _) = fit(ch).ok_or_else(|| err(format!("img_size {s} is inconsistent with the tokens")))?;
                Ok((ch, patches, s))
            }
            _ => Err(err(format!("--img-size {s} does not fit the checkpoint's tokens (T, c) per layer {layers:?}"))),
        };
    }
    let options: Vec<usize> = [1, 3].into_iter().filter(|&ch| fit(ch).is_some()).collect();
    if options.len() == 1 {
        let (patches, img) = fit(options[0]).unwrap();
        return Ok((options[0], patches, img));
    }
    let readings: Vec<String> =
        (1..=layers[0].1).filter_map(|ch| fit(ch).map(|(p, img)| format!("{ch} channel(s), patch {}, {img} px", p[0]))).collect();
    Err(err(format!(
        "the image channel count is ambiguous: tokens of width {} fit {}; pass --in-channels N (or --img-size N)",
        layers[0].1,
        readings.join(" or ")
    )))
}

/// Infers the config of a checkpoint from its tensor shapes and `opts`.
pub fn infer_config(src: &NamedTensors, opts: &ImportOptions) -> Result<ModelConfig, CheckpointError> {
    let err = |reason: String| CheckpointError::Config { path: src.path.clone(), reason };
    let shape = |name: &str| {
        src.tensors
            .iter()
            .find(|(k, _)| canonical_name(k) == name)
            .map(|(_, t)| t.shape.clone())
            .ok_or_else(|| err(format!("no tensor '{name}': not an iTARFlow checkpoint, or a truncated one")))
    };
    let names: Vec<String> = src.tensors.keys().map(|k| canonical_name(k)).collect();
    let index_after = |prefix: &str| -> Vec<usize> {
        names.iter().filter_map(|n| n.strip_prefix(prefix)).filter_map(|rest| rest.split('.').next()?.parse().ok()).collect()
    };
    let num_layers = index_after("blocks.").into_iter().max().map_or(0, |m| m + 1);
    if num_layers == 0 {
        return Err(err("no 'blocks.N.*' tensors: not an iTARFlow checkpoint".into()));
    }
    let shared = index_after("shared_backbone.").into_iter().max().map_or(0, |m| m + 1);
    let mut widths = Vec::new();
    let mut tokens = Vec::new();
    let mut blocks = Vec::new();
    let mut affine = None;
    let mut num_classes = None;
    for l in 0..num_layers {
        let w = shape(&format!("blocks.{l}.proj_in.weight"))?;
        let (width, c) = (w[0], w[1]);
        let t = shape(&format!("blocks.{l}.pos_embed"))?[0];
        let out = shape(&format!("blocks.{l}.proj_out.weight"))?[0];
        let layer_affine = match out {
            o if o == 2 * c => true,
            o if o == c => false,
            o => return Err(err(format!("blocks.{l}.proj_out has {o} outputs for tokens of width {c}"))),
        };
        if affine.replace(layer_affine).is_some_and(|a| a != layer_affine) {
            return Err(err("layers disagree on affine vs shift-only".into()));
        }
        let classes = src.tensors.get(&format!("blocks.{l}.class_embed")).map_or(0, |t| t.shape[0]);
        if num_classes.replace(classes).is_some_and(|k| k != classes) {
            return Err(err("layers disagree on the number of classes".into()));
        }
        let own = index_after(&format!("blocks.{l}.head_blocks.")).into_iter().max().map_or(0, |m| m + 1);
        widths.push(width);
        tokens.push((t, c));
        blocks.push(own + shared);
    }
    let block_name = if shared > 0 { "shared_backbone.0".to_string() } else { "blocks.0.head_blocks.0".to_string() };
    let hidden = shape(&format!("{block_name}.mlp.main.0.weight"))?[0];
    let expansion = hidden / widths[0];
    let (in_channels, patches, img_size) = geometry(&src.path, &tokens, opts)?;
    let head_dim = opts.head_dim.unwrap_or(64);
    let config = ModelConfig {
        img_size,
        in_channels,
        patch_sizes: patches,
        num_layers,
        widths,
        blocks_per_layer: blocks,
        head_dim,
        expansion,
        num_classes: num_classes.unwrap_or(0),
        shared_backbone_blocks: shared,
        affine: affine.unwrap_or(true),
        input_scale: opts.input_scale.unwrap_or(1.0),
        t_min: opts.t_min.unwrap_or(0.01),
        t_max: opts.t_max.unwrap_or_else(|| default_t_max(img_size)),
    }
    .normalized();
    config.validate().map_err(|e| {
        let hint = if e.to_string().contains("head_dim") { "; pass --head-dim N" } else { "" };
        err(format!("{e}{hint}"))
    })?;
    Ok(config)
}

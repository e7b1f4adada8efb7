//! Model configuration: the shapes of an iTARFlow model, serialisable as JSON, with presets.
//!
//! Field names follow this project; the comments give the reference's (`transformer_flow.Model`)
//! argument each one corresponds to.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid model config: {0}")]
    Invalid(String),
    #[error("unknown preset '{name}'; presets: {available}")]
    UnknownPreset { name: String, available: String },
}

fn default_head_dim() -> usize {
    64
}
fn default_expansion() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_input_scale() -> f64 {
    1.0
}
fn default_t_min() -> f64 {
    0.01
}
fn default_t_max() -> f64 {
    0.3
}

/// The shape of an iTARFlow model. Per-layer lists (`patch_sizes`, `widths`,
/// `blocks_per_layer`) hold either one value for every layer or one value per layer, as in the
/// reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Square image side in pixels (`img_size`).
    pub img_size: usize,
    /// Image channels (`in_channels`): 1 grey, 3 RGB.
    pub in_channels: usize,
    /// Patch side per flow layer (`patch_sizes`).
    pub patch_sizes: Vec<usize>,
    /// Number of flow layers (`num_blocks`; the reference calls a flow layer a MetaBlock).
    pub num_layers: usize,
    /// Transformer width per flow layer (`channels`).
    pub widths: Vec<usize>,
    /// Transformer blocks per flow layer (`layers_per_block`), e.g. the deep-shallow `[2, 2, 2, 12]`.
    pub blocks_per_layer: Vec<usize>,
    /// Channels per attention head (64 in the reference).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// MLP hidden width as a multiple of the width (4 in the reference).
    #[serde(default = "default_expansion")]
    pub expansion: usize,
    /// Number of classes; 0 for an unconditional model.
    #[serde(default)]
    pub num_classes: usize,
    /// Transformer blocks shared by every flow layer and run before its own (`shared_backbone_layers`).
    #[serde(default)]
    pub shared_backbone_blocks: usize,
    /// Affine flow (log-scale and shift, `nvp=True`) or shift only.
    #[serde(default = "default_true")]
    pub affine: bool,
    /// Multiplier applied to the patchified input (`input_scale`).
    #[serde(default = "default_input_scale")]
    pub input_scale: f64,
    /// Smallest training noise level.
    #[serde(default = "default_t_min")]
    pub t_min: f64,
    /// Largest training noise level, where sampling starts.
    #[serde(default = "default_t_max")]
    pub t_max: f64,
}

fn per_layer(values: &[usize], layer: usize) -> usize {
    if values.len() == 1 { values[0] } else { values[layer] }
}

impl ModelConfig {
    /// Patch side of flow layer `l`.
    pub fn patch_size(&self, l: usize) -> usize {
        per_layer(&self.patch_sizes, l)
    }
    /// Transformer width of flow layer `l`.
    pub fn width(&self, l: usize) -> usize {
        per_layer(&self.widths, l)
    }
    /// Transformer blocks owned by flow layer `l` (its `head_blocks`; shared ones excluded).
    pub fn own_blocks(&self, l: usize) -> usize {
        per_layer(&self.blocks_per_layer, l).saturating_sub(self.shared_backbone_blocks)
    }
    /// Number of tokens of flow layer `l`.
    pub fn tokens(&self, l: usize) -> usize {
        (self.img_size / self.patch_size(l)).pow(2)
    }
    /// Width of one token of flow layer `l` (C * p * p).
    pub fn token_dim(&self, l: usize) -> usize {
        self.in_channels * self.patch_size(l).pow(2)
    }
    /// Data dimension D = C * H * W.
    pub fn data_dim(&self) -> usize {
        self.in_channels * self.img_size * self.img_size
    }
    /// Attention heads of flow layer `l`.
    pub fn heads(&self, l: usize) -> usize {
        self.width(l) / self.head_dim
    }

    /// The same config with per-layer lists written compactly (one value when all layers agree),
    /// so that equal shapes compare equal.
    pub fn normalized(&self) -> Self {
        let compact = |v: &Vec<usize>| if v.iter().all(|&x| x == v[0]) { vec![v[0]] } else { v.clone() };
        Self {
            patch_sizes: compact(&self.patch_sizes),
            widths: compact(&self.widths),
            blocks_per_layer: compact(&self.blocks_per_layer),
            ..self.clone()
        }
    }

    /// Checks every constraint the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.num_layers == 0 {
            return bad("num_layers must be at least 1".into());
        }
        if self.img_size == 0 || self.in_channels == 0 {
            return bad("img_size and in_channels must be positive".into());
        }
        for (name, list) in [("patch_sizes", &self.patch_sizes), ("widths", &self.widths), ("blocks_per_layer", &self.blocks_per_layer)] {
            if list.len() != 1 && list.len() != self.num_layers {
                return bad(format!(
                    "{name} has {} entries; give one value for all layers or one per layer ({})",
                    list.len(),
                    self.num_layers
                ));
            }
        }
        if self.head_dim == 0 || self.expansion == 0 {
            return bad("head_dim and expansion must be positive".into());
        }
        for l in 0..self.num_layers {
            let p = self.patch_size(l);
            if p == 0 || !self.img_size.is_multiple_of(p) {
                return bad(format!("img_size {} is not a multiple of layer {l}'s patch size {p}", self.img_size));
            }
            let w = self.width(l);
            if w == 0 || !w.is_multiple_of(self.head_dim) {
                return bad(format!("layer {l}'s width {w} is not a multiple of head_dim {}", self.head_dim));
            }
            if per_layer(&self.blocks_per_layer, l) == 0 {
                return bad(format!("layer {l} has no transformer block"));
            }
        }
        if self.shared_backbone_blocks > 0 && self.widths.iter().any(|&w| w != self.width(0)) {
            return bad("a shared backbone needs the same width in every layer".into());
        }
        if self.input_scale.is_nan() || self.input_scale <= 0.0 {
            return bad(format!("input_scale must be positive, got {}", self.input_scale));
        }
        if !(self.t_min > 0.0 && self.t_min < self.t_max) {
            return bad(format!("need 0 < t_min < t_max, got t_min {} and t_max {}", self.t_min, self.t_max));
        }
        Ok(())
    }

    /// The names of the built-in presets.
    pub fn preset_names() -> &'static [&'static str] {
        &["tiny16", "fmnist-s", "fmnist-m", "imagenet64", "imagenet128", "imagenet256"]
    }

    /// A built-in configuration.
    ///
    /// - `tiny16`: the shape of the reference test checkpoint (16 px grey, 4 layers of width 64).
    /// - `fmnist-s`, `fmnist-m`: class-conditional 32 px grey models sized for CPU training.
    /// - `imagenet64/128/256`: the reference's published ImageNet recipes (width 1280/1600/2176,
    ///   deep-shallow blocks `[4, 4, 4, 24]`, patch 2/4/8). At 128 and 256 px they have 1.19B and
    ///   2.2B parameters, the sizes the paper gives for its L and XL models.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let base = |img_size, in_channels, patch, width, blocks: Vec<usize>, classes, t_max| ModelConfig {
            img_size,
            in_channels,
            patch_sizes: vec![patch],
            num_layers: blocks.len(),
            widths: vec![width],
            blocks_per_layer: blocks,
            head_dim: 64,
            expansion: 4,
            num_classes: classes,
            shared_backbone_blocks: 0,
            affine: true,
            input_scale: 1.0,
            t_min: 0.01,
            t_max,
        };
        let config = match name {
            "tiny16" => base(16, 1, 2, 64, vec![2; 4], 10, 0.3),
            "fmnist-s" => base(32, 1, 4, 128, vec![2; 4], 10, 0.3),
            "fmnist-m" => base(32, 1, 2, 256, vec![2, 2, 2, 4], 10, 0.3),
            "imagenet64" => base(64, 3, 2, 1280, vec![4, 4, 4, 24], 1000, 0.3),
            "imagenet128" => base(128, 3, 4, 1600, vec![4, 4, 4, 24], 1000, 0.5),
            "imagenet256" => base(256, 3, 8, 2176, vec![4, 4, 4, 24], 1000, 0.7),
            _ => {
                return Err(ConfigError::UnknownPreset { name: name.into(), available: Self::preset_names().join(", ") });
            }
        };
        Ok(config.normalized())
    }

    /// Number of trainable parameters a model of this shape has.
    pub fn num_params(&self) -> usize {
        let block = |w: usize| {
            let e = self.expansion * w;
            2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * e + e) + (e * w + w)
        };
        let shared = if self.shared_backbone_blocks > 0 { self.shared_backbone_blocks * block(self.width(0)) } else { 0 };
        shared
            + (0..self.num_layers)
                .map(|l| {
                    let (w, c, t) = (self.width(l), self.token_dim(l), self.tokens(l));
                    let time = (w * 4 * w + 4 * w) + (4 * w * w + w);
                    (c * w + w) + t * w + self.num_classes * w + self.own_blocks(l) * block(w) + (w * 2 * c + 2 * c) + time
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for name in ModelConfig::preset_names() {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn large_presets_match_the_papers_parameter_counts() {
        let l = ModelConfig::preset("imagenet128").unwrap().num_params() as f64;
        let xl = ModelConfig::preset("imagenet256").unwrap().num_params() as f64;
        assert!((l / 1e9 - 1.2).abs() < 0.05, "{l}");
        assert!((xl / 1e9 - 2.2).abs() < 0.08, "{xl}");
    }

    #[test]
    fn invalid_configs_say_why() {
        let mut c = ModelConfig::preset("tiny16").unwrap();
        c.patch_sizes = vec![3];
        assert!(c.validate().unwrap_err().to_string().contains("patch size 3"));
        let mut c = ModelConfig::preset("tiny16").unwrap();
        c.widths = vec![64, 64];
        assert!(c.validate().unwrap_err().to_string().contains("widths has 2 entries"));
        let mut c = ModelConfig::preset("tiny16").unwrap();
        c.widths = vec![96];
        assert!(c.validate().unwrap_err().to_string().contains("head_dim"));
        assert!(ModelConfig::preset("huge").unwrap_err().to_string().contains("tiny16"));
    }

    #[test]
    fn json_round_trip_with_defaults() {
        let c = ModelConfig::preset("fmnist-m").unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModelConfig>(&text).unwrap(), c);
        let minimal = r#"{"img_size":16,"in_channels":1,"patch_sizes":[2],"num_layers":4,"widths":[64],"blocks_per_layer":[2]}"#;
        let m: ModelConfig = serde_json::from_str(minimal).unwrap();
        assert_eq!((m.head_dim, m.num_classes, m.affine, m.t_max), (64, 0, true, 0.3));
    }
}

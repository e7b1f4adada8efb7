//! The sampler's choices besides the sampling settings: which KV cache phase 1 uses, how the
//! score is computed, the package's default settings, and the progress reported during a run.

use itarflow_base::manifest::GraphKind;

use super::{CfgStyle, Guidance, SampleSettings};
use crate::RtError;
use crate::model::Model;

/// Checks sampling settings for a model with `num_classes` classes (0: unconditional).
pub fn validate(s: &SampleSettings, num_classes: usize) -> Result<(), RtError> {
    if !(s.t_max > 0.0 && s.t_min > 0.0 && s.t_min <= s.t_max && s.t_max.is_finite()) {
        return Err(RtError::Setting(format!("need 0 < t_min <= t_max, got t_min {} and t_max {}", s.t_min, s.t_max)));
    }
    if !(s.guidance.scale >= 0.0 && s.guidance.scale.is_finite()) {
        return Err(RtError::Setting(format!("the guidance scale must be >= 0, got {}", s.guidance.scale)));
    }
    if s.guidance.scale > 0.0 && num_classes == 0 {
        return Err(RtError::Setting("guidance needs a class-conditional model; this one is unconditional".into()));
    }
    if s.guidance.uncond_temperature.is_nan() || s.guidance.uncond_temperature <= 0.0 {
        return Err(RtError::Setting(format!("the unconditional temperature must be > 0, got {}", s.guidance.uncond_temperature)));
    }
    if s.denoise_steps > 10_000 {
        return Err(RtError::Setting(format!("{} denoising steps is past the limit of 10,000", s.denoise_steps)));
    }
    Ok(())
}

/// The settings recorded in a package.
pub fn defaults(model: &Model) -> SampleSettings {
    let s = &model.manifest.sampler;
    SampleSettings {
        guidance: Guidance {
            scale: s.cfg,
            style: if s.cfg_style == "starflow" { CfgStyle::Starflow } else { CfgStyle::Tarflow },
            layers: s.guide_layers,
            annealed: s.annealed,
            uncond_temperature: 1.0,
        },
        t_max: s.t_max,
        t_min: s.t_min,
        denoise_steps: s.denoise_steps,
        clip: false,
        denoise_batch: 64,
    }
}

/// Which KV cache phase 1 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepCache {
    /// Past K/V grow by one token per step (Concat): the least work; the default.
    #[default]
    Growing,
    /// Fixed-length K/V written in place (ScatterElements) with masked attention: static shapes
    /// but the batch, for TensorRT engines.
    Fixed,
}

impl StepCache {
    /// The step graphs of this cache.
    pub fn graph_kind(self) -> GraphKind {
        match self {
            StepCache::Growing => GraphKind::Step,
            StepCache::Fixed => GraphKind::StepFixed,
        }
    }

    /// Length of the K/V cache fed to the step at position `pos` of a layer of `tokens` tokens.
    pub fn past_len(self, tokens: usize, pos: usize) -> usize {
        match self {
            StepCache::Growing => pos,
            StepCache::Fixed => tokens,
        }
    }
}

/// How the score (grad_x log p) is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreForm {
    /// The whole-model score graph: fastest; its memory grows with depth.
    #[default]
    Whole,
    /// Forward graphs, then each layer's VJP graph from the top (forward recomputed inside):
    /// the activations of one layer alive at a time.
    Layerwise,
}

impl ScoreForm {
    /// The graph families this form runs.
    pub fn graph_kinds(self) -> &'static [GraphKind] {
        match self {
            ScoreForm::Whole => &[GraphKind::Score],
            ScoreForm::Layerwise => &[GraphKind::Forward, GraphKind::LayerVjp],
        }
    }
}

/// Progress of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A layer of a phase-1 batch was inverted.
    Invert { layer: usize, layers: usize, batch: usize, batches: usize },
    /// A denoising step finished (all images).
    Denoise { step: usize, steps: usize },
    /// Images with NaN/Inf are being sampled again from new noise.
    Retry { images: usize, attempt: usize },
}

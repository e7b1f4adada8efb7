//! Everything that defines a training run, stored with its checkpoints so that `--resume`
//! continues with exactly the same settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::data::DatasetKind;

/// The optimiser's fixed hyper-parameters (the paper's AdamW): betas (0.9, 0.95), epsilon 1e-8;
/// the default weight decay 1e-4. Every training path takes them from here.
pub mod adamw {
    pub const BETA1: f64 = 0.9;
    pub const BETA2: f64 = 0.95;
    pub const EPSILON: f64 = 1e-8;
    pub const WEIGHT_DECAY: f64 = 1e-4;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// Checkpoint whose weights start the run (fine-tuning, or a longer schedule after a finished
    /// run) instead of a random initialisation from `seed`; its config must equal `model`. The
    /// optimiser and the EMA start afresh from these weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    pub dataset: DatasetKind,
    pub data_dir: PathBuf,
    /// Padding on each side of every image (e.g. 2: 28 -> 32 px).
    pub pad: usize,
    pub hflip: bool,
    pub batch_size: usize,
    /// Total optimisation steps (the cosine schedule ends here).
    pub steps: u64,
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps (the paper: one epoch).
    pub warmup: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Gradient clipping by global norm (0 = off).
    pub grad_clip: f64,
    /// EMA decay of the weights (None = off).
    pub ema: Option<f64>,
    /// Probability of replacing a label by "unconditional" (for guidance).
    pub label_dropout: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub eval_every: u64,
    /// Test images used for the bits/dim evaluations during training.
    pub eval_images: usize,
    pub log_every: u64,
    /// Guidance scale of the sample grids made during training.
    pub sample_cfg: f64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), super::TrainError> {
        let bad = |m: &str| Err(super::TrainError::Invalid(m.into()));
        self.model.validate().map_err(|e| super::TrainError::Invalid(e.to_string()))?;
        if self.batch_size == 0 || self.steps == 0 {
            return bad("batch size and steps must be positive");
        }
        if self.lr.is_nan() || self.lr <= 0.0 || self.min_lr < 0.0 || self.min_lr > self.lr {
            return bad("need 0 <= min_lr <= lr and lr > 0");
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad("label dropout must be in [0, 1)");
        }
        if let Some(d) = self.ema
            && !(0.0..1.0).contains(&d)
        {
            return bad("EMA decay must be in [0, 1)");
        }
        if self.checkpoint_every == 0 || self.log_every == 0 {
            return bad("checkpoint and log intervals must be positive");
        }
        Ok(())
    }
}

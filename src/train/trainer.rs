//! One optimisation step of the iTARFlow objective, and the run state around it.
//!
//! Per image: t ~ U[t_min, t_max], x_t = x + t eps, label dropped to "unconditional" with
//! probability p; loss = mean over the batch of t * (0.5 mean(z^2) - sum_l logdet_l). All the
//! randomness of step s comes from a stream seeded by (seed, s), so a resumed run draws exactly
//! what an uninterrupted one would.

use std::path::Path;

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use itarflow_base::GaussianNoise;

use super::state::{self, TrainState};
use super::{TrainConfig, TrainError, ema, schedule};
use crate::checkpoint::{self, ImportOptions};
use crate::data::Batch;
use crate::model::{ITarFlow, Labels};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Step number (1-based count of steps done after this one).
    pub step: u64,
    /// Batch mean of the unweighted per-image loss 0.5 mean(z^2) - logdet.
    pub loss: f64,
    /// The optimised, t-weighted loss.
    pub weighted_loss: f64,
    /// Bits/dim of the batch's noisy images at their own t ([-1, 1] scale).
    pub bpd: f64,
    pub lr: f64,
    /// True when the loss was not finite and the update was skipped.
    pub skipped: bool,
}

pub struct Trainer {
    pub config: TrainConfig,
    /// The model being trained, on an autodiff device.
    pub model: ITarFlow,
    optim: ModuleOptimizer,
    pub ema: Option<ITarFlow>,
    /// Steps done.
    pub step: u64,
    pub skipped: u64,
    consecutive_bad: u32,
    /// Wall time of all previous segments of this run.
    pub elapsed_before: f64,
}

/// Give up after this many non-finite losses in a row.
const MAX_CONSECUTIVE_BAD: u32 = 20;

fn optimizer(c: &TrainConfig) -> ModuleOptimizer {
    let mut cfg = AdamWConfig::new()
        .with_beta_1(c.beta1 as f32)
        .with_beta_2(c.beta2 as f32)
        .with_epsilon(super::config::adamw::EPSILON as f32)
        .with_weight_decay(c.weight_decay as f32);
    if c.grad_clip > 0.0 {
        cfg = cfg.with_grad_clipping(Some(GradientClippingConfig::Norm(c.grad_clip as f32)));
    }
    cfg.init()
}

fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB).rotate_left(17)
}

impl Trainer {
    /// A fresh run: the model initialised from `config.seed`.
    pub fn new(config: TrainConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let device = crate::default_device();
        device.seed(config.seed);
        let model = ITarFlow::new(&config.model, &device.autodiff()).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let ema = config.ema.map(|_| ema::snapshot(&model));
        Ok(Self { optim: optimizer(&config), config, model, ema, step: 0, skipped: 0, consecutive_bad: 0, elapsed_before: 0.0 })
    }

    /// Continues the run in `run`, from its last checkpoint.
    pub fn resume(run: &Path) -> Result<Self, TrainError> {
        let st = state::read_state(run)?;
        let dir = state::checkpoint_dir(run)?;
        let mut trainer = Self::new(st.config.clone())?;
        let model_path = dir.join(state::MODEL_FILE);
        trainer.model = trainer
            .model
            .clone()
            .try_load_file(&model_path)
            .map_err(|e| TrainError::State { path: model_path.clone(), reason: format!("{e:?}") })?;
        let optim_path = dir.join(state::OPTIM_FILE);
        trainer.optim = optimizer(&st.config)
            .load(&optim_path)
            .map_err(|e| TrainError::State { path: optim_path.clone(), reason: format!("{e:?}") })?;
        if st.config.ema.is_some() {
            let ema_path = dir.join(state::EMA_FILE);
            trainer.ema = Some(checkpoint::load(&ema_path, &ImportOptions::default(), &crate::default_device())?.model);
        }
        trainer.step = st.step;
        trainer.skipped = st.skipped_steps;
        trainer.elapsed_before = st.elapsed_seconds;
        Ok(trainer)
    }

    /// The weights to sample and evaluate with: the EMA when kept, else the trained ones.
    pub fn inference_model(&self) -> ITarFlow {
        match &self.ema {
            Some(e) => e.clone(),
            None => self.model.valid(),
        }
    }

    /// One optimisation step on `batch` (which must be the batch of step `self.step`).
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport, TrainError> {
        debug_assert_eq!(batch.step, self.step);
        let c = &self.config;
        let m = &c.model;
        let b = batch.shape[0];
        let device = self.model.device();
        let mut rng = GaussianNoise::new(step_seed(c.seed, self.step));
        let t: Vec<f32> = (0..b).map(|_| (m.t_min + (m.t_max - m.t_min) * rng.next_open01()) as f32).collect();
        let labels = if m.num_classes > 0 {
            Labels::Classes(batch.labels.iter().map(|&y| if rng.next_open01() < c.label_dropout { -1 } else { y }).collect())
        } else {
            Labels::None
        };
        let per_image = batch.images.len() / b;
        let eps = rng.sample_f32(batch.images.len());
        let xt: Vec<f32> = batch.images.iter().zip(&eps).enumerate().map(|(i, (x, e))| x + t[i / per_image] * e).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xt, batch.shape), &device);
        let t = Tensor::<1>::from_data(TensorData::new(t, [b]), &device);

        let fwd = self.model.forward(x, t.clone(), &labels);
        let loss = self.model.likelihood(&fwd).loss;
        let weighted = (loss.clone() * t).mean();
        let values = Tensor::cat(vec![weighted.clone().detach(), loss.detach().mean()], 0).try_into_vec_as::<f32>().expect("f32 loss");
        let (w_loss, mean_loss) = (values[0] as f64, values[1] as f64);
        let lr = schedule::learning_rate(self.step, c.steps, c.warmup, c.lr, c.min_lr);
        let bpd = (mean_loss + 0.5 * (2.0 * std::f64::consts::PI).ln()) / std::f64::consts::LN_2;
        let skipped = !(w_loss.is_finite() && mean_loss.is_finite());
        if skipped {
            self.skipped += 1;
            self.consecutive_bad += 1;
            if self.consecutive_bad >= MAX_CONSECUTIVE_BAD {
                return Err(TrainError::Diverged { step: self.step, count: self.consecutive_bad });
            }
        } else {
            self.consecutive_bad = 0;
            let grads = GradientsParams::from_grads(weighted.backward(), &self.model);
            self.model = self.optim.step(lr, self.model.clone(), grads);
            if let (Some(e), Some(decay)) = (self.ema.take(), c.ema) {
                self.ema = Some(ema::update(e, &self.model, decay));
            }
        }
        self.step += 1;
        Ok(StepReport { step: self.step, loss: mean_loss, weighted_loss: w_loss, bpd, lr, skipped })
    }

    /// Writes `model.safetensors` (the inference weights in the project's format), then the
    /// checkpoint (model, optimizer, EMA, state) into the run directory. In this order, a run
    /// killed between the two resumes from the previous checkpoint and writes both again; the
    /// other order could leave a finished checkpoint beside stale inference weights that a
    /// resumed run, with no step left to take, would never rewrite.
    pub fn save(&self, run: &Path, elapsed_now: f64) -> Result<(), TrainError> {
        checkpoint::save(&self.inference_model(), &run.join("model.safetensors"))?;
        let st = TrainState {
            step: self.step,
            config: self.config.clone(),
            elapsed_seconds: self.elapsed_before + elapsed_now,
            skipped_steps: self.skipped,
        };
        state::write_checkpoint(run, &st, |dir| {
            let model_path = dir.join(state::MODEL_FILE);
            self.model
                .clone()
                .save_file(&model_path)
                .map_err(|e| TrainError::State { path: model_path.clone(), reason: format!("{e:?}") })?;
            let optim_path = dir.join(state::OPTIM_FILE);
            self.optim.save(&optim_path).map_err(|e| TrainError::State { path: optim_path.clone(), reason: format!("{e:?}") })?;
            if let Some(e) = &self.ema {
                checkpoint::save(e, &dir.join(state::EMA_FILE))?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

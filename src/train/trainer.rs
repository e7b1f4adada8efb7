//! One optimisation step of the iTARFlow objective, and the run state around it.
//!
//! Per image: t ~ U[t_min, t_max], x_t = x + t eps, label dropped to "unconditional" with
//! probability p; loss = mean over the batch of t * (0.5 mean(z^2) - sum_l logdet_l). All the
//! randomness of step s comes from a stream seeded by (seed, s), so a resumed run draws exactly
//! what an uninterrupted one would.

use std::path::Path;

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
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

/// A step's gradient and losses ([`Trainer::gradients`]).
pub struct StepGradients {
    pub grads: GradientsParams,
    /// The optimised, t-weighted batch loss.
    pub weighted_loss: f64,
    /// Batch mean of the unweighted per-image loss.
    pub mean_loss: f64,
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
    /// Threads a step's batch is split over ([`default_workers`]). A step's gradient is the sum
    /// of its parts' gradients, so runs with different counts differ in rounding; a resumed run
    /// repeats an uninterrupted one bit for bit on the same count.
    pub workers: usize,
}

/// The CPU's cores (at most 8) on the CPU device, where one thread per part of the batch keeps
/// every core busy (Flex runs most ops of a small model on one thread); one on a GPU.
pub fn default_workers() -> usize {
    match crate::device::selected() {
        crate::device::DeviceKind::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()).min(8),
        _ => 1,
    }
}

/// `(start, len)` of each part of a batch of `b` split over `workers` threads: contiguous, the
/// first ones one image longer, never empty.
fn batch_parts(b: usize, workers: usize) -> Vec<(usize, usize)> {
    let n = workers.clamp(1, b.max(1));
    let mut start = 0;
    (0..n)
        .map(|k| {
            let len = b / n + usize::from(k < b % n);
            let part = (start, len);
            start += len;
            part
        })
        .collect()
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

/// The weights of checkpoint `path` as a trainable model; its config must be `expected`.
fn init_model(path: &Path, expected: &crate::ModelConfig) -> Result<ITarFlow, TrainError> {
    let device = crate::default_device().autodiff();
    let loaded = checkpoint::load(path, &ImportOptions::default(), &device)?;
    if loaded.model.config != *expected {
        return Err(TrainError::State {
            path: path.into(),
            reason: format!(
                "its model config {} differs from the run's {}; start from a checkpoint of the same shape",
                serde_json::to_string(&loaded.model.config).unwrap_or_default(),
                serde_json::to_string(expected).unwrap_or_default()
            ),
        });
    }
    Ok(loaded.model)
}

fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB).rotate_left(17)
}

impl Trainer {
    /// A fresh run: the model initialised from `config.seed`, or from the weights of
    /// `config.init` when set.
    pub fn new(config: TrainConfig) -> Result<Self, TrainError> {
        let mut trainer = Self::blank(config)?;
        if let Some(path) = trainer.config.init.clone() {
            trainer.model = init_model(&path, &trainer.config.model)?;
            trainer.ema = trainer.config.ema.map(|_| ema::snapshot(&trainer.model));
        }
        Ok(trainer)
    }

    /// A run at step 0 with randomly initialised weights (what `resume` overwrites).
    fn blank(config: TrainConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let device = crate::default_device();
        device.seed(config.seed);
        let model = ITarFlow::new(&config.model, &device.autodiff()).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let ema = config.ema.map(|_| ema::snapshot(&model));
        Ok(Self {
            optim: optimizer(&config),
            config,
            model,
            ema,
            step: 0,
            skipped: 0,
            consecutive_bad: 0,
            elapsed_before: 0.0,
            workers: default_workers(),
        })
    }

    /// Continues the run in `run`, from its last checkpoint.
    pub fn resume(run: &Path) -> Result<Self, TrainError> {
        let st = state::read_state(run)?;
        let dir = state::checkpoint_dir(run)?;
        let mut trainer = Self::blank(st.config.clone())?;
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

    /// The gradient of step `self.step`'s objective on `batch` (its noise levels, noise and
    /// label dropout drawn from the step's seed), summed over the parts of the batch the
    /// [`Self::workers`] differentiate, and the losses; nothing is updated.
    pub fn gradients(&self, batch: &Batch) -> StepGradients {
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

        // The batch in parts, one per worker thread, each differentiated on its own fork of the
        // model (its own autodiff graph: graphs that share parameter nodes are one graph under
        // one lock in Burn, whose backward would then run one at a time); the gradient is the
        // sum of the parts' gradients of sum(t * loss) / b, added in part order.
        let parts = batch_parts(b, self.workers);
        let model = &self.model;
        let run_part = |start: usize, len: usize, model: ITarFlow| {
            let [_, c, h, w] = batch.shape;
            let xs = xt[start * per_image..(start + len) * per_image].to_vec();
            let x = Tensor::<4>::from_data(TensorData::new(xs, [len, c, h, w]), &device);
            let tp = Tensor::<1>::from_data(TensorData::new(t[start..start + len].to_vec(), [len]), &device);
            let fwd = model.forward(x, tp.clone(), &labels.part(start, len));
            let loss = model.likelihood(&fwd).loss;
            // The whole batch in one part: mean(t * loss), the arithmetic of one graph per step.
            let weighted = if len == b { (loss.clone() * tp).mean() } else { (loss.clone() * tp).sum().div_scalar(b as f32) };
            let values = Tensor::cat(vec![weighted.clone().detach(), loss.detach().mean()], 0).try_into_vec_as::<f32>().expect("f32 loss");
            let grads = GradientsParams::from_grads(weighted.backward(), &model);
            // Part means weighted by the part's share of the batch: their sum is the batch mean.
            (grads, values[0] as f64, values[1] as f64 * len as f64 / b as f64)
        };
        let results: Vec<(GradientsParams, f64, f64)> = if parts.len() == 1 {
            vec![run_part(0, b, model.clone())]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = parts
                    .iter()
                    .map(|&(start, len)| {
                        let fork = model.clone().fork(&device);
                        let run_part = &run_part;
                        scope.spawn(move || run_part(start, len, fork))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a training worker panicked")).collect()
            })
        };
        let weighted_loss: f64 = results.iter().map(|r| r.1).sum();
        let mean_loss: f64 = results.iter().map(|r| r.2).sum();
        let mut sum = GradientsAccumulator::<ITarFlow>::new();
        for (grads, ..) in results {
            sum.accumulate(&self.model, grads);
        }
        StepGradients { grads: sum.grads(), weighted_loss, mean_loss }
    }

    /// One optimisation step on `batch` (which must be the batch of step `self.step`).
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport, TrainError> {
        debug_assert_eq!(batch.step, self.step);
        let StepGradients { grads, weighted_loss: w_loss, mean_loss } = self.gradients(batch);
        let c = &self.config;
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

//! A training run: the loop around [`Trainer::train_step`] that logs metrics, evaluates test
//! bits/dim, draws sample grids and writes checkpoints at their intervals, reporting each to the
//! caller's callback (the CLI's progress bar; tests). It stops at the configured steps or at a
//! limit of this invocation (minutes, steps), always after a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::metrics::MetricsLog;
use super::nll::{NllOptions, bits_per_dim};
use super::{StepReport, TrainError, Trainer};
use crate::data::{ImageSet, Loader, LoaderOptions};
use crate::sample::{Guidance, SampleOptions, class_grid, options_for};

/// Limits of one invocation (a resumed run continues where it stopped).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Stop (after a checkpoint) once this many minutes have passed.
    pub max_minutes: Option<f64>,
    /// Stop (after a checkpoint) after this many steps.
    pub max_steps: Option<u64>,
}

/// What the run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step finished.
    Step(StepReport),
    /// Averages over the steps since the last log line (also written to metrics.jsonl).
    Log { step: u64, loss: f64, bpd: f64, steps_per_second: f64 },
    /// Test bits/dim at the model's t_min.
    Eval { step: u64, bpd: f64, t: f64, images: usize },
    /// A sample grid was written.
    Samples { step: u64, path: PathBuf },
    /// A checkpoint was written.
    Checkpoint { step: u64 },
}

/// Where and how a run stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub start_step: u64,
    pub end_step: u64,
    pub seconds: f64,
}

/// The sampling settings of the grids made during training.
fn grid_options(trainer: &Trainer, model: &crate::ITarFlow) -> SampleOptions {
    let cfg = if model.config.num_classes > 0 { trainer.config.sample_cfg } else { 0.0 };
    SampleOptions { guidance: Guidance { scale: cfg, ..Guidance::default() }, ..options_for(model) }
}

/// Writes `RUN/samples/step_NNNNNNN.png`: a grid of 8 images per class of the inference weights.
pub fn sample_grid(trainer: &Trainer, run: &Path, step: u64) -> Result<PathBuf, TrainError> {
    let model = trainer.inference_model();
    let dir = run.join("samples");
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
    let path = dir.join(format!("step_{step:07}.png"));
    class_grid(&model, 8, trainer.config.seed, &grid_options(trainer, &model), &path)?;
    Ok(path)
}

/// Trains `trainer` on `train` in the run directory `run` until its configured steps or the
/// `limits`; `test` (when given) is evaluated at its interval and at the end.
pub fn run(
    trainer: &mut Trainer,
    run: &Path,
    train: Arc<ImageSet>,
    test: Option<&ImageSet>,
    limits: Limits,
    report: &mut dyn FnMut(Event),
) -> Result<Summary, TrainError> {
    let config = trainer.config.clone();
    if train.len() < config.batch_size {
        return Err(TrainError::Invalid(format!(
            "the training set has {} images, fewer than one batch of {}",
            train.len(),
            config.batch_size
        )));
    }
    let metrics_path = run.join("metrics.jsonl");
    let io = |source| TrainError::Io { path: metrics_path.clone(), source };
    // A resumed run's log keeps the lines up to its checkpoint.
    let mut metrics = MetricsLog::open(&metrics_path, (trainer.step > 0).then_some(trainer.step)).map_err(io)?;
    let opts = LoaderOptions { batch_size: config.batch_size, seed: config.seed, pad: config.pad, hflip: config.hflip, prefetch: 4 };
    let mut loader = Loader::new(train, opts, trainer.step);
    let start = Instant::now();
    let start_step = trainer.step;
    let (mut acc_loss, mut acc_bpd, mut acc_n) = (0.0, 0.0, 0u64);
    let (mut window, mut window_steps) = (Instant::now(), 0u64);
    loop {
        let out_of_time = limits.max_minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0);
        let quota = limits.max_steps.is_some_and(|n| trainer.step - start_step >= n);
        if trainer.step >= config.steps || out_of_time || quota {
            break;
        }
        let rep = trainer.train_step(&loader.next_batch())?;
        report(Event::Step(rep));
        window_steps += 1;
        if !rep.skipped {
            acc_loss += rep.loss;
            acc_bpd += rep.bpd;
            acc_n += 1;
        }
        let step = rep.step;
        let last = step == config.steps;
        if step.is_multiple_of(config.log_every) || last {
            let rate = window_steps as f64 / window.elapsed().as_secs_f64();
            let (loss, bpd) = (acc_loss / acc_n.max(1) as f64, acc_bpd / acc_n.max(1) as f64);
            metrics
                .write(&json!({
                    "step": step, "loss": loss, "bpd_train_noisy": bpd, "lr": rep.lr,
                    "steps_per_second": rate, "elapsed_seconds": trainer.elapsed_before + start.elapsed().as_secs_f64(),
                    "skipped_total": trainer.skipped,
                }))
                .map_err(io)?;
            report(Event::Log { step, loss, bpd, steps_per_second: rate });
            (acc_loss, acc_bpd, acc_n, window_steps) = (0.0, 0.0, 0, 0);
            window = Instant::now();
        }
        if let Some(test) = test
            && ((config.eval_every > 0 && step.is_multiple_of(config.eval_every)) || last)
        {
            let opts = NllOptions { pad: config.pad, t: config.model.t_min, batch_size: 250, limit: 0, seed: 0 };
            let r = bits_per_dim(&trainer.inference_model(), test, &opts, &mut |_, _| {});
            metrics
                .write(&json!({"step": step, "test_bpd": r.bpd, "test_bpd_8bit": r.bpd_8bit, "t": r.t, "images": r.images}))
                .map_err(io)?;
            report(Event::Eval { step, bpd: r.bpd, t: r.t, images: r.images });
        }
        if (config.sample_every > 0 && step.is_multiple_of(config.sample_every)) || last {
            let path = sample_grid(trainer, run, step)?;
            report(Event::Samples { step, path });
        }
        if step.is_multiple_of(config.checkpoint_every) || last {
            trainer.save(run, start.elapsed().as_secs_f64())?;
            report(Event::Checkpoint { step });
        }
    }
    // Stopped by a limit between checkpoints: one more, so that the run resumes from here.
    if !trainer.step.is_multiple_of(config.checkpoint_every) && trainer.step != config.steps {
        trainer.save(run, start.elapsed().as_secs_f64())?;
        report(Event::Checkpoint { step: trainer.step });
    }
    Ok(Summary { start_step, end_step: trainer.step, seconds: start.elapsed().as_secs_f64() })
}

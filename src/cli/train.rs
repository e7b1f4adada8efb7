//! `itarflow train`: trains a model on a data set, with checkpoints, resume, metrics, bits/dim
//! evaluations and sample grids in the run directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use itarflow::ModelConfig;
use itarflow::data::{ImageSet, Loader, LoaderOptions, Split};
use itarflow::sample::{Guidance, SampleOptions, class_grid, options_for};
use itarflow::train::metrics::MetricsLog;
use itarflow::train::nll::{NllOptions, bits_per_dim};
use itarflow::train::{TrainConfig, Trainer};
use serde_json::json;

use super::data_args::{DataArgs, padding_for};
use super::progress;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory: checkpoints, metrics.jsonl, samples/ and model.safetensors go here.
    #[arg(long, required_unless_present = "resume")]
    pub out_dir: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (all settings come from it).
    #[arg(long, conflicts_with = "out_dir")]
    pub resume: Option<PathBuf>,
    /// Model preset (see `itarflow info`); image size, channels and classes follow the data.
    #[arg(long, default_value = "fmnist-s")]
    pub preset: String,
    /// Model config JSON file instead of a preset.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Pad images to this side (e.g. 32 for 28 px Fashion-MNIST); default: the data's own size.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Random horizontal flips.
    #[arg(long)]
    pub hflip: bool,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 10_000)]
    pub steps: u64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-5)]
    pub min_lr: f64,
    /// Warm-up steps (default: one epoch).
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Keep an EMA of the weights with this decay (e.g. 0.999); it is what samples and model.safetensors use.
    #[arg(long)]
    pub ema: Option<f64>,
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    /// Largest training noise level (default: the preset's).
    #[arg(long)]
    pub t_max: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Sample grid interval (0 = only at the end).
    #[arg(long, default_value_t = 1000)]
    pub sample_every: u64,
    /// Test bits/dim interval (0 = only at the end).
    #[arg(long, default_value_t = 1000)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 1000)]
    pub eval_images: usize,
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    /// Guidance scale of the sample grids.
    #[arg(long, default_value_t = 1.0)]
    pub sample_cfg: f64,
    /// Stop (after a checkpoint) once this many minutes of this invocation have passed.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Stop (after a checkpoint) after this many steps in this invocation.
    #[arg(long)]
    pub stop_after: Option<u64>,
}

fn new_config(args: &TrainArgs, train: &ImageSet) -> Result<TrainConfig> {
    let mut model = match &args.model_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ModelConfig>(&text).with_context(|| format!("{} is not a model config", path.display()))?
        }
        None => ModelConfig::preset(&args.preset)?,
    };
    let size = args.img_size.unwrap_or(train.size);
    let pad = padding_for(train.size, size)?;
    model.img_size = size;
    model.in_channels = train.channels;
    model.num_classes = train.num_classes;
    if let Some(t) = args.t_max {
        model.t_max = t;
    }
    let bpe = (train.len() / args.batch_size.max(1)) as u64;
    let config = TrainConfig {
        model,
        dataset: args.data.dataset.clone(),
        data_dir: args.data.data_dir.clone(),
        pad,
        hflip: args.hflip,
        batch_size: args.batch_size,
        steps: args.steps,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup: args.warmup.unwrap_or(bpe),
        weight_decay: args.weight_decay,
        beta1: 0.9,
        beta2: 0.95,
        grad_clip: args.grad_clip,
        ema: args.ema,
        label_dropout: args.label_dropout,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        sample_every: args.sample_every,
        eval_every: args.eval_every,
        eval_images: args.eval_images,
        log_every: args.log_every,
        sample_cfg: args.sample_cfg,
    };
    config.validate()?;
    Ok(config)
}

fn sample_options(trainer: &Trainer, model: &itarflow::ITarFlow) -> SampleOptions {
    let cfg = if model.config.num_classes > 0 { trainer.config.sample_cfg } else { 0.0 };
    SampleOptions { guidance: Guidance { scale: cfg, ..Guidance::default() }, ..options_for(model) }
}

fn grid(trainer: &Trainer, run: &Path, step: u64) -> Result<PathBuf> {
    let model = trainer.inference_model();
    let dir = run.join("samples");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("step_{step:07}.png"));
    class_grid(&model, 8, trainer.config.seed, &sample_options(trainer, &model), &path)?;
    Ok(path)
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (run, mut trainer, train_set) = match &args.resume {
        Some(dir) => {
            let trainer = Trainer::resume(dir).with_context(|| format!("resuming {}", dir.display()))?;
            let c = &trainer.config;
            let set = itarflow::data::load(&c.dataset, &c.data_dir, Split::Train, Some(c.model.img_size))?;
            eprintln!("resuming {} at step {} of {}", dir.display(), trainer.step, c.steps);
            (dir.clone(), trainer, set)
        }
        None => {
            let run = args.out_dir.clone().expect("clap requires --out-dir without --resume");
            if run.join("checkpoint").exists() {
                bail!("{} already holds a run; continue it with --resume {0}, or choose another --out-dir", run.display());
            }
            let set = args.data.load(Split::Train, args.img_size)?;
            let config = new_config(&args, &set)?;
            std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
            let m = &config.model;
            eprintln!(
                "training {:.2}M parameters ({} layers, width {:?}, patch {:?}, {} tokens) on {} images of {}x{} px",
                m.num_params() as f64 / 1e6,
                m.num_layers,
                m.widths,
                m.patch_sizes,
                m.tokens(0),
                set.len(),
                m.img_size,
                m.img_size
            );
            (run, Trainer::new(config)?, set)
        }
    };
    let config = trainer.config.clone();
    if train_set.len() < config.batch_size {
        bail!("the training set has {} images, fewer than one batch of {}", train_set.len(), config.batch_size);
    }
    let test_set = itarflow::data::load(&config.dataset, &config.data_dir, Split::Test, Some(config.model.img_size))
        .map(|s| s.take(config.eval_images))
        .ok();
    let resumed_at = args.resume.as_ref().map(|_| trainer.step);
    let mut metrics = MetricsLog::open(&run.join("metrics.jsonl"), resumed_at)?;
    let opts = LoaderOptions { batch_size: config.batch_size, seed: config.seed, pad: config.pad, hflip: config.hflip, prefetch: 4 };
    let mut loader = Loader::new(Arc::new(train_set), opts, trainer.step);

    let start = Instant::now();
    let start_step = trainer.step;
    let bar = progress::bar(config.steps, "train");
    bar.set_position(trainer.step);
    let (mut acc_loss, mut acc_bpd, mut acc_n) = (0.0, 0.0, 0u64);
    let mut window = Instant::now();
    let mut window_steps = 0u64;
    loop {
        let done = trainer.step >= config.steps;
        let out_of_time = args.max_minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0);
        let quota = args.stop_after.is_some_and(|n| trainer.step - start_step >= n);
        if done || out_of_time || quota {
            break;
        }
        let batch = loader.next_batch();
        let rep = trainer.train_step(&batch)?;
        bar.inc(1);
        window_steps += 1;
        if rep.skipped {
            bar.println(format!("step {}: loss not finite, update skipped", rep.step));
        } else {
            acc_loss += rep.loss;
            acc_bpd += rep.bpd;
            acc_n += 1;
        }
        let step = rep.step;
        if step % config.log_every == 0 || step == config.steps {
            let rate = window_steps as f64 / window.elapsed().as_secs_f64();
            let (loss, bpd) = (acc_loss / acc_n.max(1) as f64, acc_bpd / acc_n.max(1) as f64);
            bar.set_message(format!("loss {loss:.4} bpd {bpd:.3} {rate:.2} steps/s"));
            metrics.write(&json!({
                "step": step, "loss": loss, "bpd_train_noisy": bpd, "lr": rep.lr,
                "steps_per_second": rate, "elapsed_seconds": trainer.elapsed_before + start.elapsed().as_secs_f64(),
                "skipped_total": trainer.skipped,
            }))?;
            (acc_loss, acc_bpd, acc_n, window_steps) = (0.0, 0.0, 0, 0);
            window = Instant::now();
        }
        let last = step == config.steps;
        if let Some(test) = &test_set
            && ((config.eval_every > 0 && step % config.eval_every == 0) || last)
        {
            let opts = NllOptions { pad: config.pad, t: config.model.t_min, batch_size: 250, limit: 0, seed: 0 };
            let r = bits_per_dim(&trainer.inference_model(), test, &opts, &mut |_, _| {});
            bar.println(format!("step {step}: test bits/dim {:.4} at t = {} ({} images)", r.bpd, r.t, r.images));
            metrics.write(&json!({"step": step, "test_bpd": r.bpd, "test_bpd_8bit": r.bpd_8bit, "t": r.t, "images": r.images}))?;
        }
        if (config.sample_every > 0 && step % config.sample_every == 0) || last {
            let path = grid(&trainer, &run, step)?;
            bar.println(format!("step {step}: samples in {}", path.display()));
        }
        if step % config.checkpoint_every == 0 || last {
            trainer.save(&run, start.elapsed().as_secs_f64())?;
        }
    }
    if trainer.step % config.checkpoint_every != 0 && trainer.step != config.steps {
        trainer.save(&run, start.elapsed().as_secs_f64())?;
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "stopped at step {} of {} after {:.1} min ({:.2} steps/s); weights in {}",
        trainer.step,
        config.steps,
        secs / 60.0,
        (trainer.step - start_step) as f64 / secs,
        run.join("model.safetensors").display()
    );
    Ok(())
}

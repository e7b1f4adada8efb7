//! `itarflow train`: trains a model on a data set, with checkpoints, resume, metrics, bits/dim
//! evaluations and sample grids in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use itarflow::ModelConfig;
use itarflow::data::{ImageSet, Split};
use itarflow::train::config::adamw;
use itarflow::train::{self, Event, Limits, TrainConfig, Trainer};

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
    /// Start from this checkpoint's weights (and model config) instead of a random
    /// initialisation: a longer schedule after a finished run, or fine-tuning. The optimiser and
    /// the EMA start afresh.
    #[arg(long, value_name = "CKPT", conflicts_with_all = ["model_config", "resume", "t_max"])]
    pub init: Option<PathBuf>,
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
    #[arg(long, default_value_t = adamw::WEIGHT_DECAY)]
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
    /// Threads each step's batch is split over (default: the cores, at most 8, on the CPU; 1 on
    /// a GPU). Runs with different counts differ in float rounding; a resumed run continues
    /// bit for bit with the same count.
    #[arg(long)]
    pub workers: Option<usize>,
}

fn new_config(args: &TrainArgs, train: &ImageSet) -> Result<TrainConfig> {
    let mut model = match (&args.init, &args.model_config) {
        (Some(ckpt), _) => itarflow::checkpoint::read_config(ckpt, &Default::default())
            .with_context(|| format!("reading the --init checkpoint {}", ckpt.display()))?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ModelConfig>(&text).with_context(|| format!("{} is not a model config", path.display()))?
        }
        (None, None) => ModelConfig::preset(&args.preset)?,
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
        init: args.init.clone(),
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
        beta1: adamw::BETA1,
        beta2: adamw::BETA2,
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
    if let Some(w) = args.workers {
        trainer.workers = w.max(1);
    }
    let config = trainer.config.clone();
    let test_set = match itarflow::data::load(&config.dataset, &config.data_dir, Split::Test, Some(config.model.img_size)) {
        Ok(set) => Some(set.take(config.eval_images)),
        // A data set without a test split trains without test bits/dim, and says so; any other
        // failure (a corrupt test file) stops the run.
        Err(itarflow::data::DataError::NotFound { path, .. }) => {
            eprintln!("no test split ({} not found): test bits/dim are not reported", path.display());
            None
        }
        Err(itarflow::data::DataError::Io { source, path }) if source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no test split ({} not found): test bits/dim are not reported", path.display());
            None
        }
        Err(e) => return Err(e).context("loading the test split"),
    };
    let bar = progress::bar(config.steps, "train");
    bar.set_position(trainer.step);
    let limits = Limits { max_minutes: args.max_minutes, max_steps: args.stop_after };
    let summary = train::run(&mut trainer, &run, Arc::new(train_set), test_set.as_ref(), limits, &mut |event| match event {
        Event::Step(rep) => {
            bar.inc(1);
            if rep.skipped {
                bar.suspend(|| eprintln!("step {}: loss not finite, update skipped", rep.step));
            }
        }
        Event::Log { loss, bpd, steps_per_second, .. } => {
            bar.set_message(format!("loss {loss:.4} bpd {bpd:.3} {steps_per_second:.2} steps/s"))
        }
        Event::Eval { step, bpd, t, images } => {
            bar.suspend(|| eprintln!("step {step}: test bits/dim {bpd:.4} at t = {t} ({images} images)"))
        }
        Event::Samples { step, path } => bar.suspend(|| eprintln!("step {step}: samples in {}", path.display())),
        Event::Checkpoint { .. } => {}
    })?;
    bar.finish_and_clear();
    eprintln!(
        "stopped at step {} of {} after {:.1} min ({:.2} steps/s); weights in {}",
        summary.end_step,
        config.steps,
        summary.seconds / 60.0,
        (summary.end_step - summary.start_step) as f64 / summary.seconds,
        run.join("model.safetensors").display()
    );
    Ok(())
}

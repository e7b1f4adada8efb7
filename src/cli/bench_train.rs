//! `itarflow bench-train`: training throughput and peak memory of a model shape on synthetic
//! data, as JSON. Run one shape per process so the peak resident memory is that shape's alone.

use itarflow::train::config::adamw;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use itarflow::ModelConfig;
use itarflow::data::{DatasetKind, ImageSet, Loader, LoaderOptions};
use itarflow::train::{TrainConfig, Trainer};
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Model preset.
    #[arg(long, default_value = "fmnist-s")]
    pub preset: String,
    /// Model config JSON instead of a preset.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Measured steps.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Unmeasured steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup_steps: u64,
    /// Threads each step's batch is split over (default: as `itarflow train`).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Append the JSON result as one line to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: BenchTrainArgs) -> Result<()> {
    let (name, model) = match &args.model_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            (p.display().to_string(), serde_json::from_str::<ModelConfig>(&text)?)
        }
        None => (args.preset.clone(), ModelConfig::preset(&args.preset)?),
    };
    if args.steps == 0 {
        bail!("--steps must be positive");
    }
    let (c, s) = (model.in_channels, model.img_size);
    let n = args.batch_size * 4;
    let mut noise = itarflow_base::GaussianNoise::new(1);
    let set = ImageSet {
        channels: c,
        size: s,
        pixels: (0..n * c * s * s).map(|_| noise.next_below(256) as u8).collect(),
        labels: (0..n).map(|i| (i % model.num_classes.max(1)) as i64).collect(),
        num_classes: model.num_classes,
        class_names: vec![],
    };
    let total = args.warmup_steps + args.steps;
    let config = TrainConfig {
        init: None,
        model: model.clone(),
        dataset: DatasetKind::Idx,
        data_dir: PathBuf::new(),
        pad: 0,
        hflip: true,
        batch_size: args.batch_size,
        steps: total,
        lr: 1e-4,
        min_lr: 1e-5,
        warmup: 1,
        weight_decay: adamw::WEIGHT_DECAY,
        beta1: adamw::BETA1,
        beta2: adamw::BETA2,
        grad_clip: 1.0,
        ema: None,
        label_dropout: 0.1,
        seed: 0,
        checkpoint_every: total,
        sample_every: 0,
        eval_every: 0,
        eval_images: 0,
        log_every: total,
        sample_cfg: 0.0,
    };
    let mut trainer = Trainer::new(config.clone())?;
    if let Some(w) = args.workers {
        trainer.workers = w.max(1);
    }
    let opts = LoaderOptions { batch_size: args.batch_size, seed: 0, pad: 0, hflip: true, prefetch: 4 };
    let mut loader = Loader::new(Arc::new(set), opts, 0);
    for _ in 0..args.warmup_steps {
        trainer.train_step(&loader.next_batch())?;
    }
    let start = Instant::now();
    for _ in 0..args.steps {
        trainer.train_step(&loader.next_batch())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let result = json!({
        "bench": "train_step",
        "device": itarflow::device::selected().name(),
        "model": name,
        "parameters": model.num_params(),
        "tokens": model.tokens(0),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "steps_per_second": args.steps as f64 / secs,
        "images_per_second": (args.steps as usize * args.batch_size) as f64 / secs,
        "peak_rss_mib": peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0)),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "workers": trainer.workers,
    });
    println!("{result}");
    if let Some(path) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{result}")?;
    }
    Ok(())
}

//! `itarflow-rt sample`: both phases, with a progress bar, a PNG grid and/or an npz.

use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use itarflow_base::sample_args::{NoiseArgs, OutputArgs, SettingsArgs};
use itarflow_rt::{OnNonFinite, Progress, sampler};

use super::args::{CacheArg, Run};

#[derive(clap::Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub run: Run,
    #[command(flatten)]
    pub noise: NoiseArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Images per phase-1 batch (default: all at once).
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Phase 1's KV cache (default: fixed on TensorRT, growing elsewhere).
    #[arg(long, value_enum)]
    pub step_cache: Option<CacheArg>,
    /// Sample an image again from new noise when it comes out NaN/Inf, up to N times (default:
    /// fail at once).
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
}

pub fn run(a: SampleArgs) -> Result<()> {
    a.output.require_some()?;
    let model = a.run.common.load()?;
    let c = model.manifest.model.clone();
    let last = model.manifest.layers.last().expect("validated").clone();
    let (z, labels) = a.noise.draw(last.tokens, last.token_dim, c.num_classes)?;
    let settings = a.settings.apply(sampler::defaults(&model), c.num_classes)?;
    let mut b = a.run.builder(model.clone()).settings(settings).seed(a.noise.seed).batch(a.batch);
    if let Some(cache) = a.step_cache {
        b = b.step_cache(cache.into());
    }
    b = b.on_non_finite(OnNonFinite::retries(a.retries));
    let start = Instant::now();
    let sampler = a.run.open(b)?;
    sampler.warm_up()?;
    let load_s = start.elapsed().as_secs_f64();
    let s = *sampler.settings();
    let bar = ProgressBar::new((model.manifest.layers.len() + s.denoise_steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:32}] {pos}/{len} {msg} ({elapsed})").expect("template").progress_chars("=> "),
    );
    bar.set_prefix("sample");
    let run_start = Instant::now();
    let mut report = |p| match p {
        Progress::Invert { layer, layers, batch, batches } => {
            bar.set_length((layers * batches + s.denoise_steps) as u64);
            bar.set_message(format!("batch {batch}/{batches}: inverted {layer}/{layers} layers"));
            bar.inc(1);
        }
        Progress::Denoise { step, steps } => {
            bar.set_message(format!("denoise {step}/{steps}"));
            bar.inc(1);
        }
        Progress::Retry { images, attempt } => {
            bar.suspend(|| eprintln!("{images} image(s) not finite: sampling again (attempt {attempt})"))
        }
    };
    let samples = sampler.sample_from(&z, &labels, &mut report)?;
    bar.finish_and_clear();
    let secs = run_start.elapsed().as_secs_f64();
    let n = labels.len();
    let dims = [n, c.in_channels, c.img_size, c.img_size];
    let x: Vec<f32> = samples.images.iter().copied().collect();
    a.output.write(&x, dims, Some(&labels), a.noise.grid_columns(n))?;
    if a.output.json {
        println!(
            "{}",
            serde_json::json!({"images": n, "labels": labels, "provider": sampler.provider().name(),
                "precision": a.run.common.precision, "step_cache": format!("{:?}", sampler.step_cache()).to_lowercase(),
                "score_batch": s.denoise_batch, "retried": samples.retried,
                "load_seconds": load_s, "sample_seconds": secs, "images_per_second": n as f64 / secs,
                "output": a.output.output, "grid": a.output.out})
        );
    } else {
        eprintln!("{n} images in {secs:.2} s on {} ({:.2} images/s); graphs loaded in {load_s:.2} s", sampler.provider(), n as f64 / secs);
    }
    Ok(())
}

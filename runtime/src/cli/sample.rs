//! `itarflow-rt sample`: both phases, with a progress bar, a PNG grid and/or an npz.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use itarflow_base::inputs;
use itarflow_base::{Array, Npz, save_grid};
use itarflow_rt::sampler::CfgStyle;
use itarflow_rt::{OnNonFinite, Progress};

use super::args::{CacheArg, Run};

#[derive(clap::Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub run: Run,
    /// npz with prior noise `z` (B,T,c) and optional labels `y` (B,).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Class of every image (default: random classes for a conditional model).
    #[arg(long)]
    pub class: Option<i64>,
    /// Guidance scale (default: the package's).
    #[arg(long)]
    pub cfg: Option<f64>,
    #[arg(long, value_enum)]
    pub cfg_style: Option<CfgStyle>,
    /// Guided layers in sampling order: a number or `all` (default: the package's).
    #[arg(long)]
    pub guide_layers: Option<String>,
    #[arg(long)]
    pub anneal: bool,
    #[arg(long, default_value_t = 1.0)]
    pub uncond_temp: f64,
    #[arg(long)]
    pub t_max: Option<f64>,
    #[arg(long)]
    pub t_min: Option<f64>,
    /// Denoising steps (default: the package's); 0 returns the phase-1 images.
    #[arg(long)]
    pub denoise_steps: Option<usize>,
    #[arg(long)]
    pub clip: bool,
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
    /// npz to write with the images `x` and labels `y`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// PNG grid of the images.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SampleArgs) -> Result<()> {
    if a.output.is_none() && a.out.is_none() {
        bail!("nothing to write: pass --output OUT.npz and/or --out grid.png");
    }
    let model = a.run.common.load()?;
    let c = model.manifest.model.clone();
    let last = model.manifest.layers.last().expect("validated").clone();
    let (z, labels) = match &a.noise {
        Some(path) => {
            let npz = Npz::read(path)?;
            let (b, z) = inputs::prior_noise(&npz, last.tokens, last.token_dim)?;
            let y = inputs::labels(&npz, b, &c)?;
            (z, inputs::choose_labels(y, a.class, b, a.seed, c.num_classes)?)
        }
        None => {
            if a.num == 0 {
                bail!("--num must be at least 1");
            }
            let labels = inputs::choose_labels(None, a.class, a.num, a.seed, c.num_classes)?;
            (itarflow_base::prior_noise(a.seed, a.num * model.noise_len()), labels)
        }
    };
    let mut b = a.run.builder(model.clone()).seed(a.seed).batch(a.batch).uncond_temperature(inputs::positive("--uncond-temp", a.uncond_temp)?);
    if let Some(w) = a.cfg {
        b = b.cfg(w);
    }
    if let Some(style) = a.cfg_style {
        b = b.cfg_style(style);
    }
    if let Some(gl) = &a.guide_layers {
        b = b.guide_layers(if gl == "all" { usize::MAX } else { gl.parse().context("--guide-layers takes a number or 'all'")? });
    }
    if a.anneal {
        b = b.annealed(true);
    }
    if let Some(t) = a.t_max {
        b = b.t_max(inputs::positive("--t-max", t)?);
    }
    if let Some(t) = a.t_min {
        b = b.t_min(inputs::positive("--t-min", t)?);
    }
    if let Some(k) = a.denoise_steps {
        b = b.denoise_steps(k);
    }
    if let Some(cache) = a.step_cache {
        b = b.step_cache(cache.into());
    }
    b = b.clip(a.clip).on_non_finite(if a.retries > 0 { OnNonFinite::Retry(a.retries) } else { OnNonFinite::Fail });
    let start = Instant::now();
    let sampler = a.run.open(b)?;
    sampler.warm_up()?;
    let load_s = start.elapsed().as_secs_f64();
    let s = *sampler.settings();
    let bar = ProgressBar::new((model.manifest.layers.len() + s.denoise_steps) as u64);
    bar.set_style(ProgressStyle::with_template("{prefix:>7} [{bar:32}] {pos}/{len} {msg} ({elapsed})").expect("template").progress_chars("=> "));
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
        Progress::Retry { images, attempt } => bar.println(format!("{images} image(s) not finite: sampling again (attempt {attempt})")),
    };
    let samples = sampler.sample_from(&z, &labels, &mut report)?;
    bar.finish_and_clear();
    let secs = run_start.elapsed().as_secs_f64();
    let n = labels.len();
    let dims = [n, c.in_channels, c.img_size, c.img_size];
    let x: Vec<f32> = samples.images.iter().copied().collect();
    if let Some(path) = &a.output {
        let mut npz = Npz::new(path);
        npz.insert("x", Array::f32(&dims, x.clone()));
        npz.insert("y", Array::i64(&[n], labels.clone()));
        npz.write()?;
    }
    if let Some(path) = &a.out {
        save_grid(path, &x, dims, (n as f64).sqrt().ceil() as usize)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"images": n, "labels": labels, "provider": sampler.provider().name(),
                "precision": a.run.common.precision, "step_cache": format!("{:?}", sampler.step_cache()).to_lowercase(),
                "score_batch": s.denoise_batch, "retried": samples.retried,
                "load_seconds": load_s, "sample_seconds": secs, "images_per_second": n as f64 / secs,
                "output": a.output, "grid": a.out})
        );
    } else {
        eprintln!("{n} images in {secs:.2} s on {} ({:.2} images/s); graphs loaded in {load_s:.2} s", sampler.provider(), n as f64 / secs);
    }
    Ok(())
}

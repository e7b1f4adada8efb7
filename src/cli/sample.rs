//! `itarflow sample`: phase 1 (autoregressive inversion with guidance) and phase 2 (iterative
//! denoising), from seeded or given prior noise.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use itarflow::Labels;
use itarflow::sample::{CfgStyle, Guidance, SampleOptions, sample, seeded_noise, total_steps};
use itarflow_base::{Array, Npz, save_grid};

use super::ckpt::CkptArgs;
use super::{inputs, progress};

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// npz with prior noise `z` (B,T,c) float32 and optional labels `y` (B,): a reproducible run.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Seed of the prior noise (and of random labels) when no --noise is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of images when no --noise is given.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Class of every image (default: random classes for a conditional model).
    #[arg(long)]
    pub class: Option<i64>,
    /// Sample N images of every class instead (a grid with one row per class).
    #[arg(long, conflicts_with_all = ["class", "noise", "num"])]
    pub per_class: Option<usize>,
    /// Guidance scale w (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub cfg: f64,
    /// How guided scale and shift are combined.
    #[arg(long, value_enum, default_value_t = CfgStyle::Tarflow)]
    pub cfg_style: CfgStyle,
    /// Layers guided, counted in sampling order: a number, or `all` (the paper guides only the first).
    #[arg(long, default_value = "1")]
    pub guide_layers: String,
    /// Ramp the guidance scale linearly over the tokens.
    #[arg(long)]
    pub anneal: bool,
    /// Attention temperature of the unconditional branch.
    #[arg(long, default_value_t = 1.0)]
    pub uncond_temp: f64,
    /// Noise level sampled at (default: the model's t_max).
    #[arg(long)]
    pub t_max: Option<f64>,
    /// Noise level of the last denoising step (default: the model's t_min).
    #[arg(long)]
    pub t_min: Option<f64>,
    /// Denoising steps; 0 returns the noisy phase-1 images.
    #[arg(long, default_value_t = 10)]
    pub denoise_steps: usize,
    /// Clip each Tweedie estimate to [-1, 1].
    #[arg(long)]
    pub clip: bool,
    /// npz to write, with the images `x` (B,C,H,W) and labels `y`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// PNG grid of the images.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

fn guide_layers(text: &str) -> Result<usize> {
    if text == "all" {
        return Ok(usize::MAX);
    }
    text.parse().with_context(|| format!("--guide-layers takes a number or 'all', got '{text}'"))
}

/// Writes images as npz (`x`, and `y` when labelled) and/or a PNG grid.
pub fn write_images(
    values: &[f32],
    dims: [usize; 4],
    y: &Labels,
    npz: Option<&Path>,
    png: Option<&Path>,
    cols: Option<usize>,
) -> Result<()> {
    if let Some(path) = npz {
        let mut out = Npz::new(path);
        out.insert("x", Array::f32(&dims, values.to_vec()));
        if let Labels::Classes(labels) = y {
            out.insert("y", Array::i64(&[dims[0]], labels.clone()));
        }
        out.write()?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = png {
        let cols = cols.unwrap_or((dims[0] as f64).sqrt().ceil() as usize);
        save_grid(path, values, dims, cols)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

pub fn run(args: SampleArgs) -> Result<()> {
    if args.output.is_none() && args.out.is_none() {
        bail!("nothing to write: pass --output OUT.npz and/or --out grid.png");
    }
    let model = args.ckpt.load()?;
    let c = model.config.clone();
    let last = c.num_layers - 1;
    let (tokens, width) = (c.tokens(last), c.token_dim(last));

    let (z, y) = match &args.noise {
        Some(path) => {
            let npz = Npz::read(path)?;
            let (b, data) = itarflow_base::inputs::prior_noise(&npz, tokens, width)?;
            let given = itarflow_base::inputs::labels(&npz, b, &c)?;
            let y = itarflow_base::inputs::choose_labels(given, args.class, b, args.seed, c.num_classes)?;
            (Tensor::<3>::from_data(TensorData::new(data, [b, tokens, width]), &model.device()), inputs::as_labels(y, c.num_classes))
        }
        None if args.per_class.is_some() => {
            let n = args.per_class.unwrap_or(1);
            if c.num_classes == 0 || n == 0 {
                bail!("--per-class needs a class-conditional model and N >= 1");
            }
            let labels: Vec<i64> = (0..c.num_classes as i64).flat_map(|k| std::iter::repeat_n(k, n)).collect();
            (seeded_noise(&model, labels.len(), args.seed), Labels::Classes(labels))
        }
        None => {
            if args.num == 0 {
                bail!("--num must be at least 1");
            }
            let b = args.num;
            let y = itarflow_base::inputs::choose_labels(None, args.class, b, args.seed, c.num_classes)?;
            let y = inputs::as_labels(y, c.num_classes);
            (seeded_noise(&model, b, args.seed), y)
        }
    };
    if args.cfg < 0.0 || !args.cfg.is_finite() {
        bail!("--cfg must be >= 0, got {}", args.cfg);
    }
    if args.cfg > 0.0 && c.num_classes == 0 {
        bail!("--cfg needs a class-conditional model; this one is unconditional");
    }
    let guidance = Guidance {
        scale: args.cfg,
        style: args.cfg_style,
        layers: guide_layers(&args.guide_layers)?,
        annealed: args.anneal,
        uncond_temperature: inputs::positive("--uncond-temp", args.uncond_temp)?,
    };
    let t_max = inputs::positive("--t-max", args.t_max.unwrap_or(c.t_max))?;
    let t_min = inputs::positive("--t-min", args.t_min.unwrap_or(c.t_min))?;
    if t_min > t_max {
        bail!("--t-min {t_min} is above --t-max {t_max}");
    }

    let start = Instant::now();
    let b = z.dims()[0];
    let opts = SampleOptions { guidance, t_max, t_min, denoise_steps: args.denoise_steps, clip: args.clip, denoise_batch: 64 };
    let bar = progress::bar(total_steps(&model, &opts), "sample");
    let x = sample(&model, z, &y, &opts, &mut |p| progress::report(&bar, p));
    bar.finish_and_clear();
    let total = start.elapsed().as_secs_f64();
    let per_image = total / b as f64;
    let dims = x.dims();
    let values = inputs::ensure_finite(&x, "the sampled images")?;
    write_images(&values, dims, &y, args.output.as_deref(), args.out.as_deref(), args.per_class)?;
    if args.json {
        let summary = serde_json::json!({
            "images": b,
            "labels": y.to_vec(b),
            "seed": if args.noise.is_some() { None } else { Some(args.seed) },
            "seconds_per_image": per_image,
            "total_seconds": total,
            "images_per_second": b as f64 / total,
            "output": args.output,
            "grid": args.out,
        });
        println!("{summary}");
    } else {
        eprintln!("{b} images in {total:.2} s ({per_image:.3} s per image)");
    }
    Ok(())
}

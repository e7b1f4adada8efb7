//! `itarflow denoise`: the iterative denoiser on given images.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use itarflow::sample::{Guidance, SampleOptions, denoise};
use itarflow_base::Npz;

use super::ckpt::CkptArgs;
use super::{inputs, progress};

#[derive(Args, Debug)]
pub struct DenoiseArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// npz with images `x` (B,C,H,W) float32 and optional labels `y` (B,) int64.
    #[arg(long)]
    pub input: PathBuf,
    /// npz to write, with the denoised images `x`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// PNG grid of the denoised images.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Noise level of the input images (default: the model's t_max).
    #[arg(long)]
    pub t_max: Option<f64>,
    /// Noise level of the last step (default: the model's t_min).
    #[arg(long)]
    pub t_min: Option<f64>,
    /// Euler steps (score evaluations); 1 is the single-step Tweedie denoiser at t-max.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Clip each Tweedie estimate to [-1, 1].
    #[arg(long)]
    pub clip: bool,
    /// Images per score evaluation (bounds memory; 0 = all at once).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

pub fn run(args: DenoiseArgs) -> Result<()> {
    if args.output.is_none() && args.out.is_none() {
        bail!("nothing to write: pass --output OUT.npz and/or --out grid.png");
    }
    let model = args.ckpt.load()?;
    let npz = Npz::read(&args.input)?;
    let x = inputs::images(&npz, "x", &model.config)?;
    let b = x.dims()[0];
    let y = inputs::labels(&npz, b, &model)?;
    let opts = SampleOptions {
        guidance: Guidance::default(),
        t_max: inputs::positive("--t-max", args.t_max.unwrap_or(model.config.t_max))?,
        t_min: inputs::positive("--t-min", args.t_min.unwrap_or(model.config.t_min))?,
        denoise_steps: args.steps,
        clip: args.clip,
        denoise_batch: args.batch_size,
    };
    if opts.denoise_steps == 0 {
        bail!("--steps must be at least 1");
    }
    if opts.t_min > opts.t_max {
        bail!("--t-min {} is above --t-max {}", opts.t_min, opts.t_max);
    }
    let bar = progress::bar(opts.denoise_steps as u64, "denoise");
    let x = denoise(&model, x, &y, &opts, &mut |p| progress::report(&bar, p));
    bar.finish_and_clear();
    let dims = x.dims();
    let values = inputs::ensure_finite(&x, "the denoised images")?;
    let labels = match &y {
        itarflow::Labels::Classes(v) => Some(v.as_slice()),
        itarflow::Labels::None => None,
    };
    let cols = (dims[0] as f64).sqrt().ceil() as usize;
    itarflow_base::sample_args::write_images(&values, dims, labels, args.output.as_deref(), args.out.as_deref(), cols)
        .context("writing the denoised images")
}

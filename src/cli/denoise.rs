//! `itarflow denoise`: the iterative denoiser on given images.

use anyhow::{Context, Result};
use clap::Args;
use itarflow::sample::{denoise, options_for};
use itarflow_base::Npz;
use itarflow_base::sample_args::{DenoiseArgs as DenoiseFlags, OutputArgs};

use super::ckpt::CkptArgs;
use super::{inputs, progress};

#[derive(Args, Debug)]
pub struct DenoiseArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    #[command(flatten)]
    pub denoise: DenoiseFlags,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Images per score evaluation (bounds memory; 0 = all at once).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

pub fn run(args: DenoiseArgs) -> Result<()> {
    args.output.require_some()?;
    let model = args.ckpt.load()?;
    let npz = Npz::read(&args.denoise.input)?;
    let x = inputs::images(&npz, "x", &model.config)?;
    let b = x.dims()[0];
    let y = inputs::labels(&npz, b, &model)?;
    let mut opts = args.denoise.apply(options_for(&model))?;
    opts.denoise_batch = args.batch_size;
    let bar = progress::bar(opts.denoise_steps as u64, "denoise");
    let x = denoise(&model, x, &y, &opts, &mut |p| progress::report(&bar, p));
    bar.finish_and_clear();
    let dims = x.dims();
    let values = inputs::ensure_finite(&x, "the denoised images")?;
    let labels = match &y {
        itarflow::Labels::Classes(v) => Some(v.as_slice()),
        itarflow::Labels::None => None,
    };
    args.output.write(&values, dims, labels, (b as f64).sqrt().ceil() as usize).context("writing the denoised images")
}

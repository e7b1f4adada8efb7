//! `itarflow eval-nll`: bits/dim of a data split at a chosen noise level.

use anyhow::{Result, bail};
use clap::Args;
use itarflow::data::Split;
use itarflow::train::nll::{NllOptions, bits_per_dim};

use super::ckpt::CkptArgs;
use super::data_args::{DataArgs, padding_for};
use super::progress;

#[derive(Args, Debug)]
pub struct EvalNllArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Noise level (default: the model's t_min).
    #[arg(long)]
    pub t: Option<f64>,
    /// Evaluate the first N images only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// Seed of the noise eps in x_t = x + t eps.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalNllArgs) -> Result<()> {
    let model = args.ckpt.load()?;
    let c = &model.config;
    let set = args.data.load(args.split, Some(c.img_size))?;
    if set.channels != c.in_channels {
        bail!("the data has {} channel(s), the model {}", set.channels, c.in_channels);
    }
    if c.num_classes > 0 && set.num_classes > c.num_classes {
        bail!("the data has {} classes, the model {}", set.num_classes, c.num_classes);
    }
    let pad = padding_for(set.size, c.img_size)?;
    let t = super::inputs::positive("--t", args.t.unwrap_or(c.t_min))?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let n = if args.limit == 0 { set.len() } else { args.limit.min(set.len()) };
    let bar = progress::bar(n as u64, "eval-nll");
    let opts = NllOptions { pad, t, batch_size: args.batch_size, limit: args.limit, seed: args.seed };
    let report = bits_per_dim(&model, &set, &opts, &mut |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:.4} bits/dim on {} {:?} images at t = {} ({:.4} on the 8-bit scale)",
            report.bpd, report.images, args.split, t, report.bpd_8bit
        );
        println!("convention: {}", report.convention);
    }
    Ok(())
}

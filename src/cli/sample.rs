//! `itarflow sample`: phase 1 (autoregressive inversion with guidance) and phase 2 (iterative
//! denoising), from seeded or given prior noise.

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use clap::Args;
use itarflow::sample::{options_for, sample, total_steps};
use itarflow_base::sample_args::{NoiseArgs, OutputArgs, SettingsArgs};

use super::ckpt::CkptArgs;
use super::{inputs, progress};

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    #[command(flatten)]
    pub noise: NoiseArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: SampleArgs) -> Result<()> {
    args.output.require_some()?;
    let model = args.ckpt.load()?;
    let c = model.config.clone();
    let last = c.num_layers - 1;
    let (tokens, width) = (c.tokens(last), c.token_dim(last));
    let (z, labels) = args.noise.draw(tokens, width, c.num_classes)?;
    let b = labels.len();
    let z = Tensor::<3>::from_data(TensorData::new(z, [b, tokens, width]), &model.device());
    let y = inputs::as_labels(labels.clone(), c.num_classes);
    let opts = args.settings.apply(options_for(&model), c.num_classes)?;

    let start = Instant::now();
    let bar = progress::bar(total_steps(&model, &opts), "sample");
    let x = sample(&model, z, &y, &opts, &mut |p| progress::report(&bar, p));
    bar.finish_and_clear();
    let total = start.elapsed().as_secs_f64();
    let per_image = total / b as f64;
    let dims = x.dims();
    let values = inputs::ensure_finite(&x, "the sampled images")?;
    let given = (c.num_classes > 0).then_some(labels.as_slice());
    args.output.write(&values, dims, given, args.noise.grid_columns(b))?;
    if args.output.json {
        let summary = serde_json::json!({
            "images": b,
            "labels": y.to_vec(b),
            "seed": if args.noise.noise.is_some() { None } else { Some(args.noise.seed) },
            "seconds_per_image": per_image,
            "total_seconds": total,
            "images_per_second": b as f64 / total,
            "output": args.output.output,
            "grid": args.output.out,
        });
        println!("{summary}");
    } else {
        eprintln!("{b} images in {total:.2} s ({per_image:.3} s per image)");
    }
    Ok(())
}

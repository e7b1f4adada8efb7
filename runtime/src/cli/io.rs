//! `itarflow-rt denoise` and `itarflow-rt score`: phase 2 alone, and the score and log p, on
//! arrays from an npz (as `itarflow denoise` and `itarflow eval`).

use std::path::PathBuf;

use anyhow::Result;
use itarflow_base::inputs;
use itarflow_base::sample_args::{DenoiseArgs as DenoiseFlags, OutputArgs};
use itarflow_base::{Array, Npz};
use itarflow_rt::sampler;

use super::args::{Run, images_and_labels};

#[derive(clap::Args)]
pub struct DenoiseArgs {
    #[command(flatten)]
    pub run: Run,
    #[command(flatten)]
    pub denoise: DenoiseFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn denoise(a: DenoiseArgs) -> Result<()> {
    a.output.require_some()?;
    let model = a.run.common.load()?;
    let npz = Npz::read(&a.denoise.input)?;
    let (shape, x, y) = images_and_labels(&npz, &model)?;
    let settings = a.denoise.apply(sampler::defaults(&model))?;
    let sampler = a.run.open(a.run.builder(model.clone()).settings(settings).classes(y.clone()))?;
    let out = sampler.denoise(x.view(), &y, &mut |_| {})?;
    let labels = (model.num_classes() > 0).then_some(y.as_slice());
    a.output.write(out.as_slice().expect("standard layout"), shape, labels, (shape[0] as f64).sqrt().ceil() as usize)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub run: Run,
    /// npz with images `x` (B,C,H,W), noise levels `t` (B,) and optional labels `y` (B,).
    #[arg(long)]
    pub input: PathBuf,
    /// npz to write, with `score` (B,C,H,W) and `logp` (B,).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let model = a.run.common.load()?;
    let npz = Npz::read(&a.input)?;
    let (shape, x, y) = images_and_labels(&npz, &model)?;
    let b = shape[0];
    let t = inputs::noise_levels(&npz, b)?;
    let sampler = a.run.open(a.run.builder(model.clone()).classes(y.clone()))?;
    let (sc, lp) = sampler.score(x.view(), &t, &y)?;
    let mut out = Npz::new(&a.output);
    out.insert("score", Array::f32(&shape, sc.iter().copied().collect()));
    out.insert("logp", Array::f32(&[b], lp.to_vec()));
    out.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

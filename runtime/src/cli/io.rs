//! `itarflow-rt denoise` and `itarflow-rt score`: phase 2 alone, and the score and log p, on
//! arrays from an npz (as `itarflow denoise` and `itarflow eval`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use itarflow_base::inputs;
use itarflow_base::{Array, Npz};

use super::args::{Run, images_and_labels};

#[derive(clap::Args)]
pub struct DenoiseArgs {
    #[command(flatten)]
    pub run: Run,
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long)]
    pub t_max: Option<f64>,
    #[arg(long)]
    pub t_min: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long)]
    pub clip: bool,
}

pub fn denoise(a: DenoiseArgs) -> Result<()> {
    let model = a.run.common.load()?;
    let npz = Npz::read(&a.input)?;
    let (shape, x, y) = images_and_labels(&npz, &model)?;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut b = a.run.builder(model.clone()).denoise_steps(a.steps).clip(a.clip).classes(y.clone());
    if let Some(t) = a.t_max {
        b = b.t_max(inputs::positive("--t-max", t)?);
    }
    if let Some(t) = a.t_min {
        b = b.t_min(inputs::positive("--t-min", t)?);
    }
    let sampler = a.run.open(b)?;
    let out = sampler.denoise(x.view(), &y, &mut |_| {})?;
    let mut npz = Npz::new(&a.output);
    npz.insert("x", Array::f32(&shape, out.iter().copied().collect()));
    npz.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub run: Run,
    #[arg(long)]
    pub input: PathBuf,
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

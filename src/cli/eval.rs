//! `itarflow eval`: z, logdet, log p and score of given images at given noise levels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use itarflow_base::{Array, Npz};

use super::ckpt::CkptArgs;
use super::inputs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// npz with `x` (B,C,H,W) float32, `t` (B,) float32 and optional `y` (B,) int64.
    #[arg(long)]
    pub input: PathBuf,
    /// npz to write: `z` (B,T,c), `logdet` (B,), `logp` (B,) nats, `bpd` (B,), `score` (B,C,H,W).
    #[arg(long)]
    pub output: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let model = args.ckpt.load()?;
    let npz = Npz::read(&args.input)?;
    let x = inputs::images(&npz, "x", &model.config)?;
    let b = x.dims()[0];
    let t = inputs::noise_levels(&npz, b)?;
    let y = inputs::labels(&npz, b, &model)?;

    let fwd = model.forward(x.clone(), t.clone(), &y);
    let (score, logp) = model.score(x.clone(), t, &y);
    let [_, tokens, width] = fwd.z.dims();
    let d = model.config.data_dim() as f64;
    let logp_v = inputs::ensure_finite(&logp, "log p")?;
    let bpd: Vec<f32> = logp_v.iter().map(|&l| (-(l as f64) / (d * std::f64::consts::LN_2)) as f32).collect();

    let mut out = Npz::new(&args.output);
    out.insert("z", Array::f32(&[b, tokens, width], inputs::ensure_finite(&fwd.z, "z")?));
    out.insert("logdet", Array::f32(&[b], inputs::ensure_finite(&fwd.logdet, "logdet")?));
    out.insert("logp", Array::f32(&[b], logp_v.clone()));
    out.insert("bpd", Array::f32(&[b], bpd.clone()));
    let dims = x.dims();
    out.insert("score", Array::f32(&dims, inputs::ensure_finite(&score, "score")?));
    out.write().with_context(|| format!("writing {}", args.output.display()))?;

    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    if args.json {
        let summary = serde_json::json!({
            "output": args.output,
            "batch": b,
            "mean_logp_nats": mean(&logp_v),
            "mean_bpd_continuous": mean(&bpd),
            "bpd_convention": "bits/dim of the continuous density of x_t in [-1,1] at each image's t; add 7 for the 8-bit [0,256) convention",
        });
        println!("{summary}");
    } else {
        eprintln!(
            "wrote {} ({b} images): mean log p {:.3} nats, {:.4} bits/dim (continuous density of x_t in [-1,1]; +7 for 8-bit scale)",
            args.output.display(),
            mean(&logp_v),
            mean(&bpd)
        );
    }
    Ok(())
}

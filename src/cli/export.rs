//! `itarflow export`: a checkpoint to a model package (ONNX graphs and manifest), optionally
//! checked graph by graph against the Burn model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use itarflow::deploy;
use itarflow_export::package::{ExportOptions, Precisions, export};

use super::ckpt::CkptArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Fp16,
    Both,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// Package directory to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    pub precision: PrecisionArg,
    /// ONNX opset (18 or later: LayerNormalization and ReduceMean with axes inputs).
    #[arg(long, default_value_t = itarflow_export::onnx::DEFAULT_OPSET)]
    pub opset: i64,
    /// Keep every graph's weights inside its own file (self-contained graphs; the package is
    /// several times larger) instead of shared weight files that all graphs refer to.
    #[arg(long)]
    pub inline_weights: bool,
    /// Smallest initializer, in bytes, moved to a weight file (default 1024 when shared; with
    /// --inline-weights, only graphs whose weights approach protobuf's 2 GB limit move them).
    #[arg(long)]
    pub external_data_bytes: Option<usize>,
    /// Default guidance scale recorded for samplers.
    #[arg(long, default_value_t = 0.0)]
    pub cfg: f64,
    /// Default guided layers recorded for samplers.
    #[arg(long, default_value_t = 1)]
    pub guide_layers: usize,
    /// Default denoising steps recorded for samplers.
    #[arg(long, default_value_t = 10)]
    pub denoise_steps: usize,
    /// Run every graph with tract and ONNX Runtime CPU against the Burn model's outputs and fail
    /// past the tolerances.
    #[arg(long)]
    pub check: bool,
    /// Print the check table as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.opset < 18 {
        bail!("--opset {} is too old: the graphs need opset 18 (ReduceMean with axes as an input)", args.opset);
    }
    let model = args.ckpt.load()?;
    let mut opts = ExportOptions::for_model(&model.config);
    opts.precisions = match args.precision {
        PrecisionArg::Fp32 => Precisions::Fp32,
        PrecisionArg::Fp16 => Precisions::Fp16,
        PrecisionArg::Both => Precisions::Both,
    };
    opts.opset = args.opset;
    opts.external_min_bytes = args.external_data_bytes;
    opts.shared_weights = !args.inline_weights;
    opts.sampler.cfg = args.cfg;
    opts.sampler.guide_layers = args.guide_layers;
    opts.sampler.denoise_steps = args.denoise_steps;
    opts.reference = deploy::reference(&model, 3, model.config.t_max * 0.5, 7);
    let start = Instant::now();
    let manifest = export(&model.config, &deploy::weights(&model), &args.out, &opts, &mut |name| eprintln!("  {name}"))
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    eprintln!("wrote {} graphs to {} in {:.2} s", manifest.graphs.len(), args.out.display(), start.elapsed().as_secs_f64());
    if args.check {
        let report = deploy::check_package(&args.out)?;
        for (p, why) in &report.skipped {
            eprintln!("note: {p} not checked: {why}");
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", itarflow_base::check::table(&report.rows));
        }
        let failed = report.failures();
        if failed > 0 {
            bail!("{failed} output(s) past tolerance");
        }
    }
    Ok(())
}

//! `itarflow convert`: rewrites any loadable checkpoint (e.g. a reference .pth) in this project's
//! format, with its config stored, in f32 or f16.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use itarflow::checkpoint::{Precision, save_as};

use super::ckpt::CkptArgs;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let model = args.ckpt.load()?;
    save_as(&model, &args.out, args.precision).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({:?})", args.out.display(), args.precision);
    Ok(())
}

//! `itarflow init`: a randomly initialised checkpoint of a preset or config file (the
//! initialisation training starts from), for trying export and deployment before training, and
//! for benchmarking them at any size.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use itarflow::ITarFlow;
use itarflow::checkpoint::{Precision, save_as};
use itarflow_base::ModelConfig;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Model preset (see `itarflow info`).
    #[arg(long, default_value = "tiny16")]
    pub preset: String,
    /// Model config JSON file instead of a preset.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

pub fn run(args: InitArgs) -> Result<()> {
    let config = match &args.model_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ModelConfig>(&text).with_context(|| format!("{} is not a model config", path.display()))?
        }
        None => ModelConfig::preset(&args.preset)?,
    };
    let model = ITarFlow::new(&config, &itarflow::default_device())?;
    save_as(&model, &args.out, args.precision).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} parameters, untrained)", args.out.display(), config.num_params());
    Ok(())
}

//! The `--ckpt` argument and the flags for checkpoints that carry no config.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use itarflow::ITarFlow;
use itarflow::checkpoint::{self, ImportOptions};

#[derive(Args, Debug, Clone)]
pub struct CkptArgs {
    /// Checkpoint: this project's .safetensors, or a reference PyTorch .pth / .safetensors state_dict.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Image channels, for checkpoints without a stored config (the shapes cannot always tell).
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Image side in pixels, for checkpoints without a stored config.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Channels per attention head, for checkpoints without a stored config (default 64).
    #[arg(long)]
    pub head_dim: Option<usize>,
}

impl CkptArgs {
    pub fn load(&self) -> Result<ITarFlow> {
        let opts = ImportOptions { in_channels: self.in_channels, img_size: self.img_size, head_dim: self.head_dim, ..Default::default() };
        let loaded =
            checkpoint::load(&self.ckpt, &opts, &itarflow::default_device()).with_context(|| format!("loading {}", self.ckpt.display()))?;
        if !loaded.config_from_file {
            let c = &loaded.model.config;
            eprintln!(
                "note: {} has no stored config; inferred {} channel(s), {} px, patch {:?}, head_dim {} from its shapes",
                self.ckpt.display(),
                c.in_channels,
                c.img_size,
                c.patch_sizes,
                c.head_dim
            );
        }
        Ok(loaded.model)
    }
}

//! `itarflow info`: a checkpoint's config and size.

use anyhow::Result;
use clap::Args;

use super::ckpt::CkptArgs;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// Print the config as JSON only.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let model = args.ckpt.load()?;
    let c = &model.config;
    if args.json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    println!("{}", args.ckpt.ckpt.display());
    println!("  image        {} x {} x {}", c.in_channels, c.img_size, c.img_size);
    println!(
        "  flow layers  {} (patch {:?}, width {:?}, blocks {:?}, shared {})",
        c.num_layers, c.patch_sizes, c.widths, c.blocks_per_layer, c.shared_backbone_blocks
    );
    println!("  heads        head_dim {}, expansion {}", c.head_dim, c.expansion);
    println!("  classes      {}", if c.num_classes == 0 { "unconditional".to_string() } else { c.num_classes.to_string() });
    println!("  noise range  t in [{}, {}]", c.t_min, c.t_max);
    println!("  parameters   {:.3}M", c.num_params() as f64 / 1e6);
    Ok(())
}

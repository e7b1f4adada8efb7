//! `itarflow-rt info`: what a package holds (every file checked against its sha256 first).

use anyhow::Result;
use itarflow_rt::info::PackageInfo;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Model package directory (default: the demo Fashion-MNIST package in models/).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn list(v: &[usize]) -> String {
    v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

pub fn run(a: InfoArgs) -> Result<()> {
    let dir = a.model.clone().unwrap_or_else(super::args::demo_package);
    let model =
        itarflow_rt::Model::load(&dir).map_err(|e| anyhow::anyhow!(e).context(format!("loading the model package {}", dir.display())))?;
    let info = PackageInfo::of(&model)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let c = &info.model;
    let s = &info.sampler;
    println!("package   {} (format {}, {}, ONNX opset {})", info.dir, info.format_version, info.producer, info.opset);
    println!("files     {} files, {}, every sha256 verified", info.files, mb(info.bytes));
    println!(
        "model     {}x{}x{} images, patches {}, {} tokens, {} flow layers (blocks {}), widths {}, {} classes, {:.2} M parameters",
        c.img_size,
        c.img_size,
        c.in_channels,
        list(&c.patch_sizes),
        info.tokens,
        c.num_layers,
        list(&c.blocks_per_layer),
        list(&c.widths),
        c.num_classes,
        info.parameters as f64 / 1e6
    );
    println!(
        "sampler   cfg {} ({}, {} guided layer(s){}), t {} -> {}, {} denoising steps",
        s.cfg,
        s.cfg_style,
        s.guide_layers,
        if s.annealed { ", annealed" } else { "" },
        s.t_max,
        s.t_min,
        s.denoise_steps
    );
    let graphs: Vec<String> = info.graphs.iter().map(|(p, g)| format!("{p}: {} graphs, {}", g.graphs, mb(g.bytes))).collect();
    println!("graphs    {} (--precision {})", graphs.join("; "), info.precisions.join(" | "));
    println!("serves as {}", info.served_as.join(", "));
    Ok(())
}

//! A tiny application embedding `itarflow-rt`: loads a model package, samples a few images of one
//! class with guidance, and writes them as a PNG grid.
//!
//! cargo run --release -p itarflow-rt --example embed -- [PACKAGE_DIR] [CLASS] [OUT.png]

use itarflow_rt::Model;
use itarflow_rt::sampler;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package").into());
    let class: i64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let out = args.next().unwrap_or_else(|| "embed.png".into());

    // Validates the manifest and every file's sha256.
    let model = Model::load(&dir)?;
    let graphs = model.tract_graphs("fp32")?;
    let c = &model.manifest.model;
    let last = model.manifest.layers.last().unwrap();

    let n = 8;
    let labels = vec![class; n];
    let z = itarflow_base::prior_noise(1, n * last.tokens * last.token_dim);
    let mut settings = sampler::defaults(&model);
    settings.guidance.scale = settings.guidance.scale.max(1.0);
    let images = sampler::sample(&model, &graphs, &z, &labels, &settings, &mut |_| {})?;

    itarflow_base::save_grid(std::path::Path::new(&out), &images, [n, c.in_channels, c.img_size, c.img_size], n)?;
    println!("wrote {n} samples of class {class} to {out}");
    Ok(())
}

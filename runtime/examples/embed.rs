//! A tiny application embedding `itarflow-rt`: loads a model package, samples a few images of one
//! class with guidance on the best provider available, and writes them as a PNG grid.
//!
//! cargo run --release -p itarflow-rt --example embed -- [PACKAGE_DIR] [CLASS] [OUT.png]

use itarflow_rt::{Model, OnNonFinite, Progress, Provider, Sampler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package").into());
    let class: i64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let out = args.next().unwrap_or_else(|| "embed.png".into());

    // Validates the manifest and every file's sha256.
    let model = Model::load(&dir)?;
    let n = 8;
    let sampler = Sampler::builder(model)
        .provider(Provider::Auto)
        .classes(vec![class; n])
        .cfg(2.0)
        .seed(1)
        .on_non_finite(OnNonFinite::Retry(2))
        .build()?;
    eprintln!("sampling on {}", sampler.provider());
    let samples = sampler.sample(&mut |p| {
        if let Progress::Denoise { step, steps } = p {
            eprint!("\rdenoising {step}/{steps}");
        }
    })?;
    eprintln!();

    let dims = samples.images.shape().to_vec();
    let values: Vec<f32> = samples.images.iter().copied().collect();
    itarflow_base::save_grid(std::path::Path::new(&out), &values, [dims[0], dims[1], dims[2], dims[3]], n)?;
    println!("wrote {n} samples of class {class} to {out}");
    Ok(())
}

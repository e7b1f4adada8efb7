//! `itarflow-rt eval-quality`: samples N images from a package and measures them with the
//! quality classifier (FLD against the test set beside its floor, class accuracy, per class).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use itarflow_base::sample_args::SettingsArgs;
use itarflow_rt::quality::{self, Classifier};
use itarflow_rt::{OnNonFinite, sampler};

use super::args::Run;

/// The Fashion-MNIST classifier shipped in the repository.
pub const DEFAULT_CLASSIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/classifier");

/// Flags of the commands that measure quality.
#[derive(clap::Args)]
pub struct QualityArgs {
    /// Classifier directory (default: models/classifier, the shipped Fashion-MNIST classifier).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Seed of the prior noise (the same seed gives the same images and figures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per sampler run (bounds memory; the images do not depend on it).
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
    /// Sample an image again from new noise when it comes out NaN/Inf, up to N times, and report
    /// how many were (default: fail at once, naming the image).
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
    /// Print JSON (the whole report, per class included).
    #[arg(long)]
    pub json: bool,
}

impl QualityArgs {
    pub fn on_non_finite(&self) -> OnNonFinite {
        OnNonFinite::retries(self.retries)
    }

    pub fn classifier(&self) -> Result<Classifier> {
        let dir = self.classifier.clone().unwrap_or_else(|| itarflow_base::shipped::shipped(DEFAULT_CLASSIFIER, "models/classifier"));
        Classifier::load(&dir).with_context(|| format!("loading the classifier {}", dir.display()))
    }
}

#[derive(clap::Args)]
pub struct EvalQualityArgs {
    #[command(flatten)]
    pub run: Run,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub quality: QualityArgs,
    /// Images to sample (each class equally often for a conditional model; the paper's protocol
    /// uses 50,000).
    #[arg(long, default_value_t = 10_000)]
    pub num: usize,
    /// Also write the first 100 images as a PNG grid.
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

pub fn bar(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:32}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

pub fn run(a: EvalQualityArgs) -> Result<()> {
    if a.num < 2 {
        bail!("--num must be at least 2 (a covariance needs two images)");
    }
    let classifier = a.quality.classifier()?;
    let model = a.run.common.load()?;
    let c = model.manifest.model.clone();
    let k = &classifier.card.config;
    if (k.channels, k.img_size) != (c.in_channels, c.img_size) {
        bail!(
            "the classifier in {} is for {}x{}x{} images, the model makes {}x{}x{}: pass --classifier for this data set",
            classifier.dir.display(),
            k.channels,
            k.img_size,
            k.img_size,
            c.in_channels,
            c.img_size,
            c.img_size
        );
    }
    let settings = a.settings.apply(sampler::defaults(&model), c.num_classes)?;
    let sampler =
        a.run.open(a.run.builder(model.clone()).settings(settings).seed(a.quality.seed).on_non_finite(a.quality.on_non_finite()))?;
    sampler.warm_up()?;
    let labels = quality::balanced_labels(a.num, c.num_classes);
    let bar = bar(a.num as u64, "sample");
    let start = Instant::now();
    let quality::Generated { images, redrawn } =
        quality::generate(&sampler, &labels, &settings, a.quality.seed, a.quality.chunk, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let report = quality::evaluate(&classifier, images.view(), &labels)?;
    if let Some(path) = &a.grid {
        let n = a.num.min(100);
        let x: Vec<f32> = images.iter().take(n * c.in_channels * c.img_size * c.img_size).copied().collect();
        itarflow_base::save_grid(path, &x, [n, c.in_channels, c.img_size, c.img_size], 10)?;
    }
    if a.quality.json {
        let g = settings.guidance;
        println!(
            "{}",
            serde_json::json!({"report": report, "num": a.num, "seed": a.quality.seed, "provider": sampler.provider().name(),
                "model": a.run.common.model, "classifier": classifier.dir,
                "settings": {"cfg": g.scale, "cfg_style": g.style, "guide_layers": g.layers, "denoise_steps": settings.denoise_steps,
                    "t_max": settings.t_max, "t_min": settings.t_min, "clip": settings.clip},
                "redrawn": redrawn, "sampling_seconds": seconds, "images_per_second": a.num as f64 / seconds})
        );
    } else {
        println!("{}", report.summary());
        if !redrawn.is_empty() {
            println!("{} image(s) came out NaN/Inf and were sampled again from new noise: {redrawn:?}", redrawn.len());
        }
        println!("sampled {} images in {:.1} s on {} ({:.1} images/s)", a.num, seconds, sampler.provider(), a.num as f64 / seconds);
    }
    Ok(())
}

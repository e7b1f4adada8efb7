//! `itarflow eval-quality`: samples N images with a checkpoint (Burn's reference sampler) or a
//! package (itarflow-rt) and measures them with the quality classifier: FLD against the test set
//! beside its floor, class accuracy, per-class figures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use itarflow::sample::{options_for, sample};
use itarflow_base::sample_args::SettingsArgs;
use itarflow_rt::quality::{self, Classifier};
use itarflow_rt::sampler::resample_non_finite;
use itarflow_rt::{Model, OnNonFinite, Provider, RtError, Sampler};
use ndarray::Array4;

use super::ckpt::CkptArgs;
use super::{inputs, progress};

/// The Fashion-MNIST classifier shipped in the repository.
const DEFAULT_CLASSIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/classifier");

#[derive(Args, Debug)]
pub struct EvalQualityArgs {
    /// Checkpoint to sample with Burn's reference sampler.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    pub ckpt: Option<PathBuf>,
    /// Model package to sample with itarflow-rt instead.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// itarflow-rt provider for --model: tract, cpu, cuda, tensorrt, tract-cuda or auto.
    #[arg(long, default_value = "tract")]
    pub provider: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Classifier directory (default: models/classifier, the shipped Fashion-MNIST classifier).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images to sample (each class equally often for a conditional model).
    #[arg(long, default_value_t = 10_000)]
    pub num: usize,
    /// Seed of the prior noise: the same seed gives the same images (Burn and itarflow-rt alike).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per sampler run.
    #[arg(long, default_value_t = 250)]
    pub chunk: usize,
    /// Images whose sampling ends in NaN/Inf are sampled again from new noise (same label), up to
    /// this many times each, and counted ('redrawn' in the JSON); 0: fail naming the image. The
    /// redraws are itarflow-rt's (same seed, same new noise), with --ckpt as with --model.
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
    #[arg(long)]
    pub json: bool,
}

/// The images of an evaluation, their labels, the images redrawn and the sampler settings.
type Sampled = (Array4<f32>, Vec<i64>, Vec<usize>, serde_json::Value);

fn sample_ckpt(a: &EvalQualityArgs, ckpt: &std::path::Path, labels_for: impl Fn(usize) -> Vec<i64>) -> Result<Sampled> {
    let model = CkptArgs { ckpt: ckpt.to_path_buf(), in_channels: None, img_size: None, head_dim: None }.load()?;
    let c = model.config.clone();
    let labels = labels_for(c.num_classes);
    let labels = labels.as_slice();
    let last = c.num_layers - 1;
    let (tokens, width) = (c.tokens(last), c.token_dim(last));
    let opts = a.settings.apply(options_for(&model), c.num_classes)?;
    let z = itarflow_base::prior_noise(a.seed, labels.len() * tokens * width);
    let bar = progress::bar(labels.len() as u64, "sample");
    let per_x = c.in_channels * c.img_size * c.img_size;
    let per_z = tokens * width;
    // Burn's sampler on (noise, labels): the images as values, NaN/Inf kept for the redraw rule.
    let mut run = |z: &[f32], y: &[i64]| -> Result<Vec<f32>, RtError> {
        let zs = Tensor::<3>::from_data(TensorData::new(z.to_vec(), [y.len(), tokens, width]), &model.device());
        let out = sample(&model, zs, &inputs::as_labels(y.to_vec(), c.num_classes), &opts, &mut |_| {});
        out.try_to_vec_as::<f32>().map_err(|e| RtError::Internal(format!("reading the sampled images: {e:?}")))
    };
    let mut x = Vec::with_capacity(labels.len() * per_x);
    let mut redrawn = Vec::new();
    for start in (0..labels.len()).step_by(a.chunk) {
        let n = a.chunk.min(labels.len() - start);
        let (zs, ys) = (&z[start * per_z..(start + n) * per_z], &labels[start..start + n]);
        let mut xs = run(zs, ys)?;
        let again = resample_non_finite(&mut xs, (zs, ys), (per_z, per_x), a.seed, OnNonFinite::retries(a.retries), &mut run, &mut |_| {})
            .map_err(|e| e.in_set_from(start))?;
        redrawn.extend(again.iter().map(|&(i, _)| start + i));
        x.extend(xs);
        bar.set_position((start + n) as u64);
    }
    bar.finish_and_clear();
    let g = opts.guidance;
    let settings = serde_json::json!({"cfg": g.scale, "cfg_style": g.style, "denoise_steps": opts.denoise_steps, "t_max": opts.t_max, "t_min": opts.t_min});
    Ok((Array4::from_shape_vec((labels.len(), c.in_channels, c.img_size, c.img_size), x)?, labels.to_vec(), redrawn, settings))
}

fn sample_package(a: &EvalQualityArgs, dir: &std::path::Path, labels_for: impl Fn(usize) -> Vec<i64>) -> Result<Sampled> {
    let model = Arc::new(Model::load(dir).with_context(|| format!("loading the model package {}", dir.display()))?);
    let c = model.manifest.model.clone();
    let settings = a.settings.apply(itarflow_rt::sampler::defaults(&model), c.num_classes)?;
    let provider: Provider = a.provider.parse()?;
    let sampler = Sampler::builder(model.clone())
        .provider(provider)
        .settings(settings)
        .seed(a.seed)
        .on_non_finite(OnNonFinite::retries(a.retries))
        .build()?;
    let labels = labels_for(c.num_classes);
    let bar = progress::bar(labels.len() as u64, "sample");
    let generated = quality::generate(&sampler, &labels, &settings, a.seed, a.chunk, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let g = settings.guidance;
    let s = serde_json::json!({"cfg": g.scale, "cfg_style": g.style, "denoise_steps": settings.denoise_steps, "t_max": settings.t_max,
        "t_min": settings.t_min, "provider": sampler.provider().name()});
    Ok((generated.images, labels, generated.redrawn, s))
}

pub fn run(a: EvalQualityArgs) -> Result<()> {
    if a.num < 2 || a.chunk == 0 {
        bail!("--num must be at least 2 and --chunk at least 1");
    }
    let dir = a.classifier.clone().unwrap_or_else(|| itarflow_base::shipped::shipped(DEFAULT_CLASSIFIER, "models/classifier"));
    let classifier = Classifier::load(&dir).with_context(|| format!("loading the classifier {}", dir.display()))?;
    let start = Instant::now();
    let (images, labels, redrawn, settings) = match (&a.ckpt, &a.model) {
        (Some(ckpt), _) => sample_ckpt(&a, ckpt, |classes| quality::balanced_labels(a.num, classes))?,
        (None, Some(model)) => sample_package(&a, model, |classes| quality::balanced_labels(a.num, classes))?,
        (None, None) => bail!("pass --ckpt FILE or --model DIR"),
    };
    let seconds = start.elapsed().as_secs_f64();
    let shape = images.shape();
    let kc = &classifier.card.config;
    if shape[1..] != [kc.channels, kc.img_size, kc.img_size] {
        bail!(
            "the classifier in {} is for {}x{}x{} images, the model makes {:?}: pass --classifier for this data set",
            dir.display(),
            kc.channels,
            kc.img_size,
            kc.img_size,
            &shape[1..]
        );
    }
    let report = quality::evaluate(&classifier, images.view(), &labels)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"report": report, "num": a.num, "seed": a.seed, "ckpt": a.ckpt, "model": a.model, "classifier": dir,
                "settings": settings, "sampling_seconds": seconds, "redrawn": redrawn})
        );
    } else {
        println!("{}", report.summary());
        println!("sampled {} images in {seconds:.1} s", a.num);
        if !redrawn.is_empty() {
            println!("{} image(s) came out NaN/Inf and were sampled again from new noise: {redrawn:?}", redrawn.len());
        }
    }
    Ok(())
}

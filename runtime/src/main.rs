//! `itarflow-rt`: sample from an exported iTARFlow model package.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use itarflow_base::{Array, Npz, prior_noise, random_labels, save_grid};
use itarflow_rt::provider::ort::{OrtDevice, OrtGraph};
use itarflow_rt::provider::tract::TractGraph;
use itarflow_rt::{Graphs, Model};
use itarflow_rt::sampler::{self, CfgStyle, Progress};

/// The demo package shipped in the repository.
const DEMO_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package");

#[derive(Parser)]
#[command(name = "itarflow-rt", version, about = "Sample from exported iTARFlow model packages (no Burn, no Python)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: guided autoregressive inversion, then iterative denoising.
    Sample(SampleArgs),
    /// Denoise images `x` (and labels `y`) from an npz with the package's score graph.
    Denoise(DenoiseArgs),
    /// Score and log p of images `x` at noise levels `t` (and labels `y`) from an npz.
    Score(ScoreArgs),
}

/// Package and provider flags shared by the subcommands that run one graph family.
#[derive(clap::Args)]
struct Common {
    /// Model package directory (default: the demo Fashion-MNIST package in models/).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Execution provider: tract (pure Rust), cpu / cuda / tensorrt (ONNX Runtime), or auto
    /// (the best that works here, saying why the others were skipped).
    #[arg(long, default_value = "tract", value_parser = ["tract", "cpu", "cuda", "tensorrt", "auto"])]
    provider: String,
    /// Graph precision.
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp16"])]
    precision: String,
    /// libonnxruntime to load (default: ORT_DYLIB_PATH, else the onnxruntime Python package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: engine and timing cache directory (engines are built once, then reused).
    #[arg(long, default_value = ".itarflow-trt-cache")]
    trt_cache: PathBuf,
    /// Images per score evaluation.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

#[derive(clap::Args)]
struct DenoiseArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    t_max: Option<f64>,
    #[arg(long)]
    t_min: Option<f64>,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long)]
    clip: bool,
}

#[derive(clap::Args)]
struct ScoreArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct SampleArgs {
    #[command(flatten)]
    common: Common,
    /// npz with prior noise `z` (B,T,c) and optional labels `y` (B,).
    #[arg(long)]
    noise: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    num: usize,
    /// Class of every image (default: random classes for a conditional model).
    #[arg(long)]
    class: Option<i64>,
    /// Guidance scale (default: the package's).
    #[arg(long)]
    cfg: Option<f64>,
    #[arg(long, value_enum)]
    cfg_style: Option<CfgStyle>,
    /// Guided layers in sampling order: a number or `all` (default: the package's).
    #[arg(long)]
    guide_layers: Option<String>,
    #[arg(long)]
    anneal: bool,
    #[arg(long, default_value_t = 1.0)]
    uncond_temp: f64,
    #[arg(long)]
    t_max: Option<f64>,
    #[arg(long)]
    t_min: Option<f64>,
    /// Denoising steps (default: the package's); 0 returns the phase-1 images.
    #[arg(long)]
    denoise_steps: Option<usize>,
    #[arg(long)]
    clip: bool,
    /// npz to write with the images `x` and labels `y`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// PNG grid of the images.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn sample(a: SampleArgs) -> Result<()> {
    if a.output.is_none() && a.out.is_none() {
        bail!("nothing to write: pass --output OUT.npz and/or --out grid.png");
    }
    let dir = a.common.model.clone().unwrap_or_else(|| PathBuf::from(DEMO_PACKAGE));
    let model = Model::load(&dir).with_context(|| format!("loading the model package {}", dir.display()))?;
    let c = model.manifest.model.clone();
    let last = model.manifest.layers.last().expect("validated").clone();
    let per = last.tokens * last.token_dim;
    let check_label = |k: i64| -> Result<i64> {
        if c.num_classes == 0 || k < -1 || k >= c.num_classes as i64 {
            bail!("label {k} is out of range: this model has {} classes (and -1 for unconditional)", c.num_classes);
        }
        Ok(k)
    };
    let (z, labels) = match &a.noise {
        Some(path) => {
            let npz = Npz::read(path)?;
            let expected = format!("(B, {}, {})", last.tokens, last.token_dim);
            let (shape, z) = npz.f32("z", 3, &expected, "the prior noise, float32 (B, T, c)")?;
            if shape[1..] != [last.tokens, last.token_dim] {
                bail!("array 'z' in {} has shape {shape:?}; this model's prior noise is {expected}", path.display());
            }
            let b = shape[0];
            let labels = if npz.get("y").is_some() {
                let (_, y) = npz.i64("y", 1, "(B,)", "")?;
                y.into_iter().map(check_label).collect::<Result<Vec<_>>>()?
            } else if let Some(k) = a.class {
                vec![check_label(k)?; b]
            } else if c.num_classes > 0 {
                random_labels(a.seed, b, c.num_classes)
            } else {
                vec![-1; b]
            };
            (z, labels)
        }
        None => {
            let labels = match a.class {
                Some(k) => vec![check_label(k)?; a.num],
                None if c.num_classes > 0 => random_labels(a.seed, a.num, c.num_classes),
                None => vec![-1; a.num],
            };
            (prior_noise(a.seed, a.num * per), labels)
        }
    };
    let mut s = sampler::defaults(&model);
    if let Some(w) = a.cfg {
        s.guidance.scale = w;
    }
    if let Some(style) = a.cfg_style {
        s.guidance.style = style;
    }
    if let Some(gl) = &a.guide_layers {
        s.guidance.layers = if gl == "all" { usize::MAX } else { gl.parse().context("--guide-layers takes a number or 'all'")? };
    }
    s.guidance.annealed |= a.anneal;
    s.guidance.uncond_temperature = a.uncond_temp;
    s.t_max = a.t_max.unwrap_or(s.t_max);
    s.t_min = a.t_min.unwrap_or(s.t_min);
    s.denoise_steps = a.denoise_steps.unwrap_or(s.denoise_steps);
    s.clip = a.clip;
    s.denoise_batch = a.common.batch_size;
    if !(s.t_max > 0.0 && s.t_min > 0.0 && s.t_min <= s.t_max) {
        bail!("need 0 < t-min <= t-max, got t-min {} and t-max {}", s.t_min, s.t_max);
    }
    let start = Instant::now();
    let (graphs, provider) = load_graphs(&model, &a.common)?;
    let load_s = start.elapsed().as_secs_f64();
    let bar = ProgressBar::new((model.manifest.layers.len() + s.denoise_steps) as u64);
    bar.set_style(ProgressStyle::with_template("{prefix:>7} [{bar:32}] {pos}/{len} {msg} ({elapsed})").expect("template").progress_chars("=> "));
    bar.set_prefix("sample");
    let run_start = Instant::now();
    let mut report = |p| {
        match p {
            Progress::Invert { layer, layers } => bar.set_message(format!("inverted {layer}/{layers} layers")),
            Progress::Denoise { step, steps } => bar.set_message(format!("denoise {step}/{steps}")),
        }
        bar.inc(1);
    };
    let x = match &graphs {
        Loaded::Tract(g) => sampler::sample(&model, g, &z, &labels, &s, &mut report)?,
        Loaded::Ort(g) => sampler::sample(&model, g, &z, &labels, &s, &mut report)?,
    };
    bar.finish_and_clear();
    let secs = run_start.elapsed().as_secs_f64();
    let b = labels.len();
    let dims = [b, c.in_channels, c.img_size, c.img_size];
    if let Some(path) = &a.output {
        let mut npz = Npz::new(path);
        npz.insert("x", Array::f32(&dims, x.clone()));
        npz.insert("y", Array::i64(&[b], labels.clone()));
        npz.write()?;
    }
    if let Some(path) = &a.out {
        save_grid(path, &x, dims, (b as f64).sqrt().ceil() as usize)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"images": b, "labels": labels, "provider": provider, "precision": a.common.precision,
                "load_seconds": load_s, "sample_seconds": secs, "images_per_second": b as f64 / secs,
                "output": a.output, "grid": a.out})
        );
    } else {
        eprintln!("{b} images in {secs:.2} s on {provider} ({:.2} images/s); graphs loaded in {load_s:.2} s", b as f64 / secs);
    }
    Ok(())
}

/// The sampler's graphs on one provider.
enum Loaded {
    Tract(Graphs<TractGraph>),
    Ort(Graphs<OrtGraph>),
}

fn ort_device(name: &str, a: &Common) -> OrtDevice {
    match name {
        "cuda" => OrtDevice::Cuda,
        "tensorrt" => OrtDevice::TensorRt { fp16: a.trt_fp16, cache_dir: a.trt_cache.clone() },
        _ => OrtDevice::Cpu,
    }
}

fn load_on(model: &Model, name: &str, a: &Common) -> Result<Loaded, itarflow_rt::RtError> {
    if name == "tract" {
        return model.tract_graphs(&a.precision).map(Loaded::Tract);
    }
    if name == "tensorrt" {
        std::fs::create_dir_all(&a.trt_cache).map_err(|e| itarflow_rt::RtError::Invalid(format!("{}: {e}", a.trt_cache.display())))?;
    }
    model.ort_graphs(&a.precision, &ort_device(name, a), a.ort_lib.as_deref()).map(Loaded::Ort)
}

/// Loads the graphs on the requested provider; `auto` tries TensorRT, CUDA, ONNX Runtime CPU,
/// then tract, and reports its choice and why the others were skipped.
fn load_graphs(model: &Model, a: &Common) -> Result<(Loaded, String)> {
    if a.provider != "auto" {
        let loaded = load_on(model, &a.provider, a).with_context(|| format!("provider {} cannot run here", a.provider))?;
        return Ok((loaded, a.provider.clone()));
    }
    let mut skipped = Vec::new();
    for name in ["tensorrt", "cuda", "cpu", "tract"] {
        match load_on(model, name, a) {
            Ok(loaded) => {
                eprintln!("auto: using {name}");
                for (n, why) in &skipped {
                    eprintln!("auto: skipped {n}: {why}");
                }
                return Ok((loaded, name.to_string()));
            }
            Err(e) => skipped.push((name, e.to_string())),
        }
    }
    bail!("no provider could run: {skipped:?}")
}

/// The package's score graph on the requested provider (tract or ONNX Runtime; `auto` = cpu).
enum ScoreGraph {
    Tract(TractGraph),
    Ort(OrtGraph),
}

fn score_graph(model: &Model, c: &Common) -> Result<ScoreGraph> {
    let path = model.graph_path(itarflow_base::manifest::GraphKind::Score, None, &c.precision)?;
    Ok(match c.provider.as_str() {
        "tract" => ScoreGraph::Tract(TractGraph::load(&path)?),
        p => {
            let device = match p {
                "cuda" => OrtDevice::Cuda,
                "tensorrt" => OrtDevice::TensorRt { fp16: c.trt_fp16, cache_dir: c.trt_cache.clone() },
                _ => OrtDevice::Cpu,
            };
            ScoreGraph::Ort(OrtGraph::load(&path, &device, c.ort_lib.as_deref()).with_context(|| format!("provider {p}"))?)
        }
    })
}

/// Images `x` (B,C,H,W) and labels `y` (B,) (default -1) from an npz, checked against the model.
fn read_images(npz: &Npz, model: &Model) -> Result<(Vec<usize>, Vec<f32>, Vec<i64>)> {
    let c = &model.manifest.model;
    let expected = format!("(B, {}, {}, {})", c.in_channels, c.img_size, c.img_size);
    let (shape, x) = npz.f32("x", 4, &expected, "the images, float32 (B, C, H, W)")?;
    if shape[1..] != [c.in_channels, c.img_size, c.img_size] {
        bail!("array 'x' in {} has shape {shape:?}; this model takes {expected}", npz.path().display());
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("array 'x' in {} has a non-finite value at flat index {i}", npz.path().display());
    }
    let b = shape[0];
    let y = if npz.get("y").is_some() { npz.i64("y", 1, "(B,)", "")?.1 } else { vec![-1; b] };
    if y.len() != b || y.iter().any(|&k| k < -1 || k >= c.num_classes.max(1) as i64 || (c.num_classes == 0 && k >= 0)) {
        bail!("array 'y' in {} must hold {b} labels in -1..{}", npz.path().display(), c.num_classes);
    }
    Ok((shape, x, y))
}

fn denoise(a: DenoiseArgs) -> Result<()> {
    let dir = a.common.model.clone().unwrap_or_else(|| PathBuf::from(DEMO_PACKAGE));
    let model = Model::load(&dir).with_context(|| format!("loading the model package {}", dir.display()))?;
    let npz = Npz::read(&a.input)?;
    let (shape, mut x, y) = read_images(&npz, &model)?;
    let mut s = sampler::defaults(&model);
    s.t_max = a.t_max.unwrap_or(s.t_max);
    s.t_min = a.t_min.unwrap_or(s.t_min);
    s.denoise_steps = a.steps;
    s.clip = a.clip;
    s.denoise_batch = a.common.batch_size;
    if s.t_min.is_nan() || s.t_min <= 0.0 || s.t_min > s.t_max || s.denoise_steps == 0 {
        bail!("need 0 < t-min <= t-max and at least one step");
    }
    match score_graph(&model, &a.common)? {
        ScoreGraph::Tract(g) => sampler::denoise(&model, &g, &mut x, &y, &s, &mut |_| {})?,
        ScoreGraph::Ort(g) => sampler::denoise(&model, &g, &mut x, &y, &s, &mut |_| {})?,
    }
    let mut out = Npz::new(&a.output);
    out.insert("x", Array::f32(&shape, x));
    out.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let dir = a.common.model.clone().unwrap_or_else(|| PathBuf::from(DEMO_PACKAGE));
    let model = Model::load(&dir).with_context(|| format!("loading the model package {}", dir.display()))?;
    let npz = Npz::read(&a.input)?;
    let (shape, x, y) = read_images(&npz, &model)?;
    let b = shape[0];
    let rank = npz.require("t", "the noise level of each image, float32 (B,)")?.shape.len().clamp(1, 2);
    let (_, t) = npz.f32("t", rank, "(B,)", "")?;
    if t.len() != b || t.iter().any(|&v| v.is_nan() || v <= 0.0) {
        bail!("array 't' in {} must hold {b} noise levels > 0", a.input.display());
    }
    let (sc, lp) = match score_graph(&model, &a.common)? {
        ScoreGraph::Tract(g) => sampler::score(&model, &g, &x, &t, &y, a.common.batch_size)?,
        ScoreGraph::Ort(g) => sampler::score(&model, &g, &x, &t, &y, a.common.batch_size)?,
    };
    let mut out = Npz::new(&a.output);
    out.insert("score", Array::f32(&shape, sc));
    out.insert("logp", Array::f32(&[b], lp));
    out.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

fn main() {
    let result = match Cli::parse().command {
        Command::Sample(a) => sample(a),
        Command::Denoise(a) => denoise(a),
        Command::Score(a) => score(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

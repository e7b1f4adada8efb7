//! `itarflow-rt`: sample from, score, check and benchmark exported iTARFlow model packages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use itarflow_base::inputs;
use itarflow_base::{Array, Npz, save_grid};
use itarflow_rt::bench::{BenchOptions, bench};
use itarflow_rt::sampler::CfgStyle;
use itarflow_rt::{Model, OnNonFinite, Precision, Progress, Provider, ProviderOptions, Sampler, SamplerBuilder, ScoreForm, StepCache};

/// The demo package shipped in the repository.
const DEMO_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package");

#[derive(Parser)]
#[command(name = "itarflow-rt", version, about = "Run exported iTARFlow model packages (no Burn, no Python): sample, denoise, score, check, bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: guided autoregressive inversion, then iterative denoising.
    Sample(SampleArgs),
    /// Denoise images `x` (and labels `y`) from an npz with the package's score.
    Denoise(DenoiseArgs),
    /// Score and log p of images `x` at noise levels `t` (and labels `y`) from an npz.
    Score(ScoreArgs),
    /// Run every graph on every provider available here against the reference outputs.
    Check(CheckArgs),
    /// Measure step and score latency, images/s and peak memory per provider.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    Tract,
    Cpu,
    Cuda,
    Tensorrt,
    Auto,
}

impl From<ProviderArg> for Provider {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Tract => Provider::Tract,
            ProviderArg::Cpu => Provider::Cpu,
            ProviderArg::Cuda => Provider::Cuda,
            ProviderArg::Tensorrt => Provider::TensorRt,
            ProviderArg::Auto => Provider::Auto,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormArg {
    Whole,
    Layerwise,
}

#[derive(Clone, Copy, ValueEnum)]
enum CacheArg {
    Growing,
    Fixed,
}

/// Package and provider flags shared by every subcommand.
#[derive(clap::Args)]
struct Common {
    /// Model package directory (default: the demo Fashion-MNIST package in models/).
    #[arg(long)]
    model: Option<PathBuf>,
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
    /// TensorRT: largest batch (rows, twice the images on guided layers) the engines' profiles cover.
    #[arg(long, default_value_t = 128)]
    trt_max_batch: usize,
}

impl Common {
    fn load(&self) -> Result<Arc<Model>> {
        let dir = self.model.clone().unwrap_or_else(|| PathBuf::from(DEMO_PACKAGE));
        Ok(Arc::new(Model::load(&dir).with_context(|| format!("loading the model package {}", dir.display()))?))
    }

    fn options(&self) -> ProviderOptions {
        ProviderOptions {
            ort_lib: self.ort_lib.clone(),
            trt_fp16: self.trt_fp16,
            trt_cache: self.trt_cache.clone(),
            trt_max_batch: self.trt_max_batch,
        }
    }

    fn precision(&self) -> Precision {
        self.precision.parse().expect("clap checked it")
    }
}

/// Flags of the commands that run on one provider.
#[derive(clap::Args)]
struct Run {
    #[command(flatten)]
    common: Common,
    /// Execution provider: tract (pure Rust), cpu / cuda / tensorrt (ONNX Runtime), or auto
    /// (the best that works here, saying why the others were skipped).
    #[arg(long, value_enum, default_value = "tract")]
    provider: ProviderArg,
    /// Images per score evaluation (default: as many as fit --memory-budget-mib).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Memory for the score evaluations, in MiB; sizes phase 2's batches.
    #[arg(long, default_value_t = 1024)]
    memory_budget_mib: usize,
    /// Score computed by the whole-model graph, or layer by layer with the VJP graphs
    /// (memory that does not grow with depth).
    #[arg(long, value_enum, default_value = "whole")]
    score_form: FormArg,
}

impl Run {
    fn builder(&self, model: Arc<Model>) -> SamplerBuilder {
        let b = Sampler::builder(model)
            .provider(self.provider.into())
            .provider_options(self.common.options())
            .precision(self.common.precision())
            .memory_budget(self.memory_budget_mib << 20)
            .score_form(match self.score_form {
                FormArg::Whole => ScoreForm::Whole,
                FormArg::Layerwise => ScoreForm::Layerwise,
            });
        match self.batch_size {
            Some(n) => b.score_batch(n),
            None => b,
        }
    }
}

fn report_choice(s: &Sampler, requested: ProviderArg) {
    if matches!(requested, ProviderArg::Auto) {
        eprintln!("auto: using {}", s.provider());
        for (p, why) in s.skipped() {
            eprintln!("auto: skipped {p}: {why}");
        }
    }
}

#[derive(clap::Args)]
struct SampleArgs {
    #[command(flatten)]
    run: Run,
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
    /// Images per phase-1 batch (default: all at once).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Phase 1's KV cache (default: fixed on TensorRT, growing elsewhere).
    #[arg(long, value_enum)]
    step_cache: Option<CacheArg>,
    /// Sample an image again from new noise when it comes out NaN/Inf, up to N times (default:
    /// fail at once).
    #[arg(long, default_value_t = 0)]
    retries: usize,
    /// npz to write with the images `x` and labels `y`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// PNG grid of the images.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

fn sample(a: SampleArgs) -> Result<()> {
    if a.output.is_none() && a.out.is_none() {
        bail!("nothing to write: pass --output OUT.npz and/or --out grid.png");
    }
    let model = a.run.common.load()?;
    let c = model.manifest.model.clone();
    let last = model.manifest.layers.last().expect("validated").clone();
    let (z, labels) = match &a.noise {
        Some(path) => {
            let npz = Npz::read(path)?;
            let (b, z) = inputs::prior_noise(&npz, last.tokens, last.token_dim)?;
            let y = inputs::labels(&npz, b, &c)?;
            (z, inputs::choose_labels(y, a.class, b, a.seed, c.num_classes)?)
        }
        None => {
            if a.num == 0 {
                bail!("--num must be at least 1");
            }
            let labels = inputs::choose_labels(None, a.class, a.num, a.seed, c.num_classes)?;
            (itarflow_base::prior_noise(a.seed, a.num * model.noise_len()), labels)
        }
    };
    let mut b = a.run.builder(model.clone()).seed(a.seed).batch(a.batch).uncond_temperature(inputs::positive("--uncond-temp", a.uncond_temp)?);
    if let Some(w) = a.cfg {
        b = b.cfg(w);
    }
    if let Some(style) = a.cfg_style {
        b = b.cfg_style(style);
    }
    if let Some(gl) = &a.guide_layers {
        b = b.guide_layers(if gl == "all" { usize::MAX } else { gl.parse().context("--guide-layers takes a number or 'all'")? });
    }
    if a.anneal {
        b = b.annealed(true);
    }
    if let Some(t) = a.t_max {
        b = b.t_max(inputs::positive("--t-max", t)?);
    }
    if let Some(t) = a.t_min {
        b = b.t_min(inputs::positive("--t-min", t)?);
    }
    if let Some(k) = a.denoise_steps {
        b = b.denoise_steps(k);
    }
    if let Some(cache) = a.step_cache {
        b = b.step_cache(match cache {
            CacheArg::Growing => StepCache::Growing,
            CacheArg::Fixed => StepCache::Fixed,
        });
    }
    b = b.clip(a.clip).on_non_finite(if a.retries > 0 { OnNonFinite::Retry(a.retries) } else { OnNonFinite::Fail });
    let start = Instant::now();
    let sampler = b.build().with_context(|| format!("provider {} cannot run here", Provider::from(a.run.provider)))?;
    report_choice(&sampler, a.run.provider);
    sampler.warm_up()?;
    let load_s = start.elapsed().as_secs_f64();
    let s = *sampler.settings();
    let bar = ProgressBar::new((model.manifest.layers.len() + s.denoise_steps) as u64);
    bar.set_style(ProgressStyle::with_template("{prefix:>7} [{bar:32}] {pos}/{len} {msg} ({elapsed})").expect("template").progress_chars("=> "));
    bar.set_prefix("sample");
    let run_start = Instant::now();
    let mut report = |p| match p {
        Progress::Invert { layer, layers, batch, batches } => {
            bar.set_length((layers * batches + s.denoise_steps) as u64);
            bar.set_message(format!("batch {batch}/{batches}: inverted {layer}/{layers} layers"));
            bar.inc(1);
        }
        Progress::Denoise { step, steps } => {
            bar.set_message(format!("denoise {step}/{steps}"));
            bar.inc(1);
        }
        Progress::Retry { images, attempt } => bar.println(format!("{images} image(s) not finite: sampling again (attempt {attempt})")),
    };
    let samples = sampler.sample_from(&z, &labels, &mut report)?;
    bar.finish_and_clear();
    let secs = run_start.elapsed().as_secs_f64();
    let n = labels.len();
    let dims = [n, c.in_channels, c.img_size, c.img_size];
    let x: Vec<f32> = samples.images.iter().copied().collect();
    if let Some(path) = &a.output {
        let mut npz = Npz::new(path);
        npz.insert("x", Array::f32(&dims, x.clone()));
        npz.insert("y", Array::i64(&[n], labels.clone()));
        npz.write()?;
    }
    if let Some(path) = &a.out {
        save_grid(path, &x, dims, (n as f64).sqrt().ceil() as usize)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"images": n, "labels": labels, "provider": sampler.provider().name(),
                "precision": a.run.common.precision, "step_cache": format!("{:?}", sampler.step_cache()).to_lowercase(),
                "score_batch": s.denoise_batch, "retried": samples.retried,
                "load_seconds": load_s, "sample_seconds": secs, "images_per_second": n as f64 / secs,
                "output": a.output, "grid": a.out})
        );
    } else {
        eprintln!("{n} images in {secs:.2} s on {} ({:.2} images/s); graphs loaded in {load_s:.2} s", sampler.provider(), n as f64 / secs);
    }
    Ok(())
}

#[derive(clap::Args)]
struct DenoiseArgs {
    #[command(flatten)]
    run: Run,
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

fn denoise(a: DenoiseArgs) -> Result<()> {
    let model = a.run.common.load()?;
    let npz = Npz::read(&a.input)?;
    let (shape, x) = inputs::images(&npz, "x", &model.manifest.model)?;
    let y = inputs::labels(&npz, shape[0], &model.manifest.model)?.unwrap_or_else(|| vec![-1; shape[0]]);
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut b = a.run.builder(model.clone()).denoise_steps(a.steps).clip(a.clip).classes(y.clone());
    if let Some(t) = a.t_max {
        b = b.t_max(inputs::positive("--t-max", t)?);
    }
    if let Some(t) = a.t_min {
        b = b.t_min(inputs::positive("--t-min", t)?);
    }
    let sampler = b.build().with_context(|| format!("provider {} cannot run here", Provider::from(a.run.provider)))?;
    report_choice(&sampler, a.run.provider);
    let x = ndarray::Array4::from_shape_vec(shape, x)?;
    let out = sampler.denoise(x.view(), &y, &mut |_| {})?;
    let mut npz = Npz::new(&a.output);
    npz.insert("x", Array::f32(&shape, out.iter().copied().collect()));
    npz.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

#[derive(clap::Args)]
struct ScoreArgs {
    #[command(flatten)]
    run: Run,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
}

fn score(a: ScoreArgs) -> Result<()> {
    let model = a.run.common.load()?;
    let npz = Npz::read(&a.input)?;
    let (shape, x) = inputs::images(&npz, "x", &model.manifest.model)?;
    let b = shape[0];
    let t = inputs::noise_levels(&npz, b)?;
    let y = inputs::labels(&npz, b, &model.manifest.model)?.unwrap_or_else(|| vec![-1; b]);
    let sampler = a.run.builder(model.clone()).classes(y.clone()).build()?;
    report_choice(&sampler, a.run.provider);
    let x = ndarray::Array4::from_shape_vec(shape, x)?;
    let (sc, lp) = sampler.score(x.view(), &t, &y)?;
    let mut out = Npz::new(&a.output);
    out.insert("score", Array::f32(&shape, sc.iter().copied().collect()));
    out.insert("logp", Array::f32(&[b], lp.to_vec()));
    out.write()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Reference inputs and outputs (default: the package's reference.npz, made by Burn at export).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Providers to check (default: all; those that cannot run here are listed as skipped).
    #[arg(long, value_enum, value_delimiter = ',')]
    providers: Vec<ProviderArg>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn check(a: CheckArgs) -> Result<()> {
    let model = a.common.load()?;
    let reference = match &a.reference {
        Some(p) => Npz::read(p)?,
        None => itarflow_rt::check::package_reference(&model)?,
    };
    let providers: Vec<Provider> = if a.providers.is_empty() {
        vec![Provider::Tract, Provider::Cpu, Provider::Cuda, Provider::TensorRt]
    } else {
        a.providers.iter().map(|&p| p.into()).filter(|&p| p != Provider::Auto).collect()
    };
    let report = itarflow_rt::check::check(model, &reference, &providers, &a.common.options())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", itarflow_base::check::table(&report.rows));
        for (p, why) in &report.skipped {
            eprintln!("skipped {p}: {why}");
        }
    }
    let failed = report.failures();
    if failed > 0 {
        bail!("{failed} output(s) past tolerance");
    }
    Ok(())
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Providers to measure, each in a process of its own so that peak memory is per provider
    /// (default: tract and ONNX Runtime CPU, then CUDA and TensorRT when they load).
    #[arg(long, value_enum, value_delimiter = ',')]
    providers: Vec<ProviderArg>,
    /// Images per run.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed repetitions of the step and score latencies.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    #[arg(long, value_enum, default_value = "whole")]
    score_form: FormArg,
    #[arg(long, value_enum)]
    step_cache: Option<CacheArg>,
    /// Measure in this process (used for the per-provider child processes).
    #[arg(long, hide = true)]
    in_process: bool,
    /// Print JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let providers: Vec<Provider> = if a.providers.is_empty() {
        vec![Provider::Tract, Provider::Cpu, Provider::Cuda, Provider::TensorRt]
    } else {
        a.providers.iter().map(|&p| p.into()).collect()
    };
    let explicit = !a.providers.is_empty();
    if a.in_process {
        let model = a.common.load()?;
        let opts = BenchOptions {
            batch: a.batch,
            repeats: a.repeats,
            score_form: match a.score_form {
                FormArg::Whole => ScoreForm::Whole,
                FormArg::Layerwise => ScoreForm::Layerwise,
            },
            step_cache: a.step_cache.map(|c| match c {
                CacheArg::Growing => StepCache::Growing,
                CacheArg::Fixed => StepCache::Fixed,
            }),
        };
        let r = bench(model, providers[0], a.common.precision(), &a.common.options(), &opts)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    // This command's flags, less --providers (each child gets one).
    let mut forwarded: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(2);
    while let Some(arg) = args.next() {
        if arg == "--providers" {
            args.next();
        } else if !arg.starts_with("--providers=") {
            forwarded.push(arg);
        }
    }
    let mut rows = Vec::new();
    for p in providers {
        let out = std::process::Command::new(&exe)
            .arg("bench")
            .args(&forwarded)
            .args(["--in-process", "--providers", p.name()])
            .output()?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if explicit {
                bail!("bench on {p} failed: {why}");
            }
            eprintln!("skipped {p}: {why}");
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let r: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("bench output of {p}: {line}"))?;
        if a.json {
            println!("{line}");
        }
        rows.push(r);
    }
    if !a.json {
        println!(
            "{:<9} {:<5} {:>6} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "provider", "prec", "batch", "step ms", "score ms", "sample s", "images/s", "peak MiB"
        );
        for r in &rows {
            println!(
                "{:<9} {:<5} {:>6} {:>10.3} {:>10.1} {:>10.2} {:>12.2} {:>10.0}",
                r["provider"].as_str().unwrap_or(""),
                r["precision"].as_str().unwrap_or(""),
                r["batch"],
                r["step_ms"].as_f64().unwrap_or(f64::NAN),
                r["score_ms"].as_f64().unwrap_or(f64::NAN),
                r["sample_seconds"].as_f64().unwrap_or(f64::NAN),
                r["images_per_second"].as_f64().unwrap_or(f64::NAN),
                r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if rows.is_empty() {
        bail!("no provider could be measured");
    }
    Ok(())
}

fn main() {
    let result = match Cli::parse().command {
        Command::Sample(a) => sample(a),
        Command::Denoise(a) => denoise(a),
        Command::Score(a) => score(a),
        Command::Check(a) => check(a),
        Command::Bench(a) => bench_cmd(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

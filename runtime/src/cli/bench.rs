//! `itarflow-rt bench`: latency, throughput and peak memory per provider, each measured in a
//! child process of its own so that peak memory is the provider's.

use anyhow::{Context, Result, bail};
use itarflow_base::sample_args::SettingsArgs;
use itarflow_rt::bench::{BenchOptions, bench};
use itarflow_rt::sampler;

use super::args::{CacheArg, Common, FormArg, ProviderArg, ResidentArg, providers_or_all};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Providers to measure, each in a process of its own so that peak memory is per provider
    /// (default: tract and ONNX Runtime CPU, then CUDA and TensorRT when they load).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub providers: Vec<ProviderArg>,
    /// Images per run.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed repetitions of the step and score latencies.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value = "whole")]
    pub score_form: FormArg,
    #[arg(long, value_enum)]
    pub step_cache: Option<CacheArg>,
    /// Both phases as loops of the fused graphs (default: on for CUDA and TensorRT).
    #[arg(long, value_enum, default_value = "auto")]
    pub resident: ResidentArg,
    /// The sampler settings measured (default: the package's; printed with the figures).
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Measure in this process (used for the per-provider child processes).
    #[arg(long, hide = true)]
    pub in_process: bool,
    /// Print JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let providers = providers_or_all(&a.providers);
    let explicit = !a.providers.is_empty();
    if a.in_process {
        let model = a.common.load()?;
        let settings = a.settings.apply(sampler::defaults(&model), model.num_classes())?;
        let opts = BenchOptions {
            batch: a.batch,
            repeats: a.repeats,
            score_form: a.score_form.into(),
            step_cache: a.step_cache.map(Into::into),
            settings: Some(settings),
            resident: a.resident.setting(),
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
        let out =
            std::process::Command::new(&exe).arg("bench").args(&forwarded).args(["--in-process", "--providers", p.name()]).output()?;
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
        if let Some(r) = rows.first() {
            println!(
                "settings: cfg {} ({}, {} guided layer(s)), t {} -> {}, {} denoising steps; {} CPU thread(s)",
                r["cfg"],
                r["cfg_style"].as_str().unwrap_or(""),
                r["guide_layers"],
                r["t_max"],
                r["t_min"],
                r["denoise_steps"],
                r["threads"]
            );
        }
        println!(
            "{:<9} {:<5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}  phase 1 / phase 2",
            "provider", "prec", "batch", "step ms", "score ms", "phase1 s", "phase2 s", "sample s", "images/s", "peak MiB", "GPU MiB"
        );
        let num = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        for r in &rows {
            println!(
                "{:<9} {:<5} {:>6} {:>9.3} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>10.1} {:>9.0} {:>9.0}  {} / {}",
                r["provider"].as_str().unwrap_or(""),
                r["precision"].as_str().unwrap_or(""),
                r["batch"],
                num(r, "step_ms"),
                num(r, "score_ms"),
                num(r, "phase1_seconds"),
                num(r, "phase2_seconds"),
                num(r, "sample_seconds"),
                num(r, "images_per_second"),
                num(r, "peak_rss_mib"),
                num(r, "gpu_memory_mib"),
                r["phase1"].as_str().unwrap_or(""),
                r["phase2"].as_str().unwrap_or("")
            );
            if let Some(k) = r["cpu_kernels"].as_str() {
                println!("  {}: CPU kernels: {k}", r["provider"].as_str().unwrap_or(""));
            }
            if let Some(m) = r["loop_mode"].as_str() {
                println!("  {}: {m}", r["provider"].as_str().unwrap_or(""));
            }
            if let Some(layers) = r["phase1_layers_ms"].as_array().filter(|l| !l.is_empty()) {
                let ms: Vec<String> = layers.iter().map(|v| format!("{:.1}", v.as_f64().unwrap_or(f64::NAN))).collect();
                println!("  {}: phase 1 per layer (ms, inversion order): {}", r["provider"].as_str().unwrap_or(""), ms.join(" "));
            }
        }
    }
    if rows.is_empty() {
        bail!("no provider could be measured");
    }
    Ok(())
}

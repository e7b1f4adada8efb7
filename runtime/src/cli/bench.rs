//! `itarflow-rt bench`: latency, throughput and peak memory per provider, each measured in a
//! child process of its own so that peak memory is the provider's.

use anyhow::{Context, Result, bail};
use itarflow_rt::bench::{BenchOptions, bench};

use super::args::{CacheArg, Common, FormArg, ProviderArg, providers_or_all};

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
        let opts = BenchOptions {
            batch: a.batch,
            repeats: a.repeats,
            score_form: a.score_form.into(),
            step_cache: a.step_cache.map(Into::into),
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

//! `itarflow-rt`: sample from, score, check and benchmark exported iTARFlow model packages.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "itarflow-rt",
    version,
    about = "Run exported iTARFlow model packages (no Burn, no Python): sample, denoise, score, info, check, bench, serve, eval-quality, ablate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: guided autoregressive inversion, then iterative denoising.
    Sample(cli::sample::SampleArgs),
    /// Denoise images `x` (and labels `y`) from an npz with the package's score.
    Denoise(cli::io::DenoiseArgs),
    /// Score and log p of images `x` at noise levels `t` (and labels `y`) from an npz.
    Score(cli::io::ScoreArgs),
    /// What a package holds: model, sampler defaults, graphs by precision, sizes (files checked).
    Info(cli::info::InfoArgs),
    /// Run every graph on every provider available here against the reference outputs.
    Check(cli::check::CheckArgs),
    /// Measure step and score latency, images/s and peak memory per provider.
    Bench(cli::bench::BenchArgs),
    /// Serve the package over the Open Inference Protocol (KServe v2: REST, and gRPC with --grpc-port), with dynamic batching.
    Serve(cli::serve::ServeArgs),
    /// Sample N images and measure them: FLD against the test set (with its floor), class accuracy.
    EvalQuality(cli::quality::EvalQualityArgs),
    /// The paper's sampler ablations: FLD and class accuracy against denoising steps, guidance
    /// scale and style (JSON, Markdown table, PNG plot).
    Ablate(cli::ablate::AblateArgs),
}

fn main() {
    itarflow_rt::allocator::retain_freed_memory();
    let result = match Cli::parse().command {
        Command::Sample(a) => cli::sample::run(a),
        Command::Denoise(a) => cli::io::denoise(a),
        Command::Score(a) => cli::io::score(a),
        Command::Info(a) => cli::info::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::EvalQuality(a) => cli::quality::run(a),
        Command::Ablate(a) => cli::ablate::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", itarflow_base::report::describe(e.chain()));
        std::process::exit(1);
    }
}

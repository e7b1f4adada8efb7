//! `itarflow`: train, evaluate, sample from, denoise with and export iTARFlow models (Burn on the
//! CPU, or on a GPU through Vulkan or CUDA with `--device`).

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "itarflow", version, about = "iTARFlow normalizing-flow image models: likelihood, score, sampling and denoising")]
struct Cli {
    /// Burn device for every command: cpu (Flex), vulkan (the `vulkan` build: cubecl's SPIR-V),
    /// wgpu (the `wgpu` build: WGSL kernels through wgpu's naga) or cuda (the `cuda` build).
    /// Default: cuda in a cuda build, else cpu.
    #[arg(long, global = true, value_name = "cpu|vulkan|wgpu|cuda")]
    device: Option<itarflow::DeviceKind>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Forward pass: z, logdet, log p and the score of images at given noise levels.
    Eval(cli::eval::EvalArgs),
    /// Generate images: autoregressive inversion with guidance, then iterative denoising.
    Sample(cli::sample::SampleArgs),
    /// Denoise images (any model's) with this model's score: the Euler ODE from t-max to t-min.
    Denoise(cli::denoise::DenoiseArgs),
    /// Train a model on a data set (Fashion-MNIST by default), with checkpoints and resume.
    Train(cli::train::TrainArgs),
    /// Bits/dim of a data split at a chosen noise level.
    EvalNll(cli::eval_nll::EvalNllArgs),
    /// Rewrite a checkpoint in this project's format (config stored), in f32 or f16.
    Convert(cli::convert::ConvertArgs),
    /// Training steps/s and peak memory of a model shape on synthetic data (JSON).
    BenchTrain(cli::bench_train::BenchTrainArgs),
    /// Export a model package: per-layer ONNX graphs, step graphs, the score graph, manifest.
    Export(cli::export::ExportArgs),
    /// Print a checkpoint's config and size.
    Info(cli::info::InfoArgs),
    /// Write a randomly initialised (untrained) checkpoint of a preset or config.
    Init(cli::init::InitArgs),
    /// Train the quality classifier (LeNet-style) and write its directory for eval-quality.
    TrainClassifier(cli::train_classifier::TrainClassifierArgs),
    /// Sample N images (checkpoint or package) and measure them: FLD with its floor, class accuracy.
    EvalQuality(cli::eval_quality::EvalQualityArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Some(kind) = cli.device
        && let Err(e) = itarflow::device::select(kind)
    {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Eval(a) => cli::eval::run(a),
        Command::Sample(a) => cli::sample::run(a),
        Command::Denoise(a) => cli::denoise::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::BenchTrain(a) => cli::bench_train::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::EvalNll(a) => cli::eval_nll::run(a),
        Command::TrainClassifier(a) => cli::train_classifier::run(a),
        Command::EvalQuality(a) => cli::eval_quality::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", itarflow_base::report::describe(e.chain()));
        std::process::exit(1);
    }
}

//! `itarflow-rt serve`: the package behind the Open Inference Protocol (KServe v2 REST, and gRPC
//! with `--grpc-port`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use itarflow_base::sample_args::SettingsArgs;
use itarflow_rt::sampler;
use itarflow_rt::serve::batcher::BatchOptions;
use itarflow_rt::serve::models::RequestLimits;
use itarflow_rt::serve::{ServeOptions, Served, serve};
use itarflow_rt::{Model, RtError, Sampler};

use super::args::Run;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PadArg {
    Auto,
    On,
    Off,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub run: Run,
    /// The sampling model's name (default: the package folder's name, or its parent's for a
    /// folder called `package`); the score and denoising models add -score and -denoise.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve every package of this folder (a sub-folder NAME with manifest.json, or
    /// NAME/package/manifest.json; models named NAME, NAME-score, NAME-denoise) instead of one
    /// package (--model), and load and unload packages of it while serving (Triton's model
    /// repository extension: `load_model`, `unload_model`).
    #[arg(long, conflicts_with = "name")]
    pub model_repository: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the REST endpoints (0: an ephemeral one, printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Also serve the protocol's gRPC service (`inference.GRPCInferenceService`) on this port
    /// (Triton's is 8001; 0: an ephemeral one, printed).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Images per sampler run: concurrent requests with the same settings are merged up to this.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// How long a waiting request waits for others to merge with, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_queue_delay_ms: u64,
    /// Pad each sampler run to a power of two images (at most --max-batch): on: always; auto: where
    /// the sampler's loops run as captured CUDA graphs (CUDA, TensorRT), which capture one graph
    /// per batch size.
    #[arg(long, value_enum, default_value_t = PadArg::Auto)]
    pub pad_batches: PadArg,
    /// Requests waiting, at most (more get 429): for the sampler, and for score and denoising
    /// runs each.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Score and denoising requests that run at once per package, at most (default: the CPU's
    /// cores); the others wait in arrival order, and one whose timeout passes leaves unrun.
    #[arg(long)]
    pub max_image_runs: Option<usize>,
    /// Images one request may ask for or send.
    #[arg(long, default_value_t = 256)]
    pub max_images: usize,
    /// Denoising steps one request may ask for.
    #[arg(long, default_value_t = 200)]
    pub max_denoise_steps: usize,
    /// Request body size, at most, in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: usize,
    /// A request without its result after this many seconds gets 504.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Seconds after SIGTERM/SIGINT during which new requests get 503 before the listener closes.
    #[arg(long, default_value_t = 2.0)]
    pub shutdown_grace_s: f64,
    /// Log lines as JSON objects instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Default sampler settings (a request's cfg and denoise_steps override them).
    #[command(flatten)]
    pub settings: SettingsArgs,
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(std::io::stderr().is_terminal());
    if a.log_json {
        builder.json().init()
    } else {
        builder.init()
    }
    let a = Arc::new(a);
    let served = match &a.model_repository {
        Some(dir) => {
            anyhow::ensure!(
                a.run.common.model.is_none(),
                "--model serves one package and --model-repository a folder of them: give one or the other"
            );
            let args = a.clone();
            let open = move |dir: &Path| -> Result<Sampler, RtError> {
                let model = Arc::new(Model::load(dir)?);
                let settings =
                    args.settings.apply(sampler::defaults(&model), model.num_classes()).map_err(|e| RtError::Setting(e.to_string()))?;
                args.run.builder(model).settings(settings).build()
            };
            tracing::info!(repository = %dir.display(), "serving a model repository");
            Served::Repository { dir: dir.clone(), open: Box::new(open) }
        }
        None => {
            let model = a.run.common.load()?;
            let name = a.name.clone().unwrap_or_else(|| model.default_name());
            let settings = a.settings.apply(sampler::defaults(&model), model.num_classes())?;
            let sampler = a.run.open(a.run.builder(model).settings(settings))?;
            tracing::info!(provider = %sampler.provider(), model = %name, "loaded");
            Served::Package { name, sampler: Arc::new(sampler) }
        }
    };
    let opts = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        grpc_addr: a.grpc_port.map(|p| SocketAddr::new(a.host, p)),
        batch: BatchOptions {
            max_batch: a.max_batch.max(1),
            max_delay: Duration::from_millis(a.max_queue_delay_ms),
            max_queue: a.max_queue,
            max_image_runs: a.max_image_runs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1),
            pad: matches!(a.pad_batches, PadArg::On),
        },
        pad_auto: matches!(a.pad_batches, PadArg::Auto),
        limits: RequestLimits { max_images: a.max_images.max(1), max_denoise_steps: a.max_denoise_steps },
        max_body_bytes: a.max_body_mib << 20,
        timeout: Duration::from_secs(a.timeout_s.max(1)),
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace_s.max(0.0)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(served, opts, signal(), |at| {
        eprintln!("listening on http://{}", at.http);
        tracing::info!(addr = %at.http, "listening");
        if let Some(g) = at.grpc {
            eprintln!("gRPC listening on {g}");
            tracing::info!(addr = %g, "gRPC listening");
        }
    }))?;
    Ok(())
}

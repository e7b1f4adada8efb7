//! Flags shared by the subcommands: the package, its precision and the ONNX Runtime and
//! TensorRT settings (`Common`), and the provider and score settings of those that run graphs
//! (`Run`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use itarflow_base::Npz;
use itarflow_base::inputs;
use itarflow_rt::provider::tract::F16Compute;
use itarflow_rt::{CudaGraphs, Model, Precision, Provider, ProviderOptions, Sampler, SamplerBuilder, ScoreForm, StepCache};

/// The demo package shipped in the repository.
const DEMO_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package");

/// The demo package: see [`itarflow_base::shipped::shipped`].
pub fn demo_package() -> PathBuf {
    itarflow_base::shipped::shipped(DEMO_PACKAGE, "models/fmnist/package")
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProviderArg {
    Tract,
    TractCuda,
    Cpu,
    Cuda,
    Tensorrt,
    Auto,
}

impl From<ProviderArg> for Provider {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Tract => Provider::Tract,
            ProviderArg::TractCuda => Provider::TractCuda,
            ProviderArg::Cpu => Provider::Cpu,
            ProviderArg::Cuda => Provider::Cuda,
            ProviderArg::Tensorrt => Provider::TensorRt,
            ProviderArg::Auto => Provider::Auto,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormArg {
    Whole,
    Layerwise,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CacheArg {
    Growing,
    Fixed,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ResidentArg {
    /// On for CUDA and TensorRT when the package has the loop graphs, off on CPUs.
    Auto,
    On,
    Off,
}

impl ResidentArg {
    /// The builder's setting (None: its default).
    pub fn setting(self) -> Option<bool> {
        match self {
            ResidentArg::Auto => None,
            ResidentArg::On => Some(true),
            ResidentArg::Off => Some(false),
        }
    }
}

/// Package and provider flags shared by every subcommand.
#[derive(clap::Args)]
pub struct Common {
    /// Model package directory (default: the demo Fashion-MNIST package in models/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Graph precision: fp32, fp16, or mixed (phase 1 in fp32, phase 2's score in fp16; needs a
    /// package exported with `--precision both`).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp16", "mixed"])]
    pub precision: String,
    /// libonnxruntime to load (default: ORT_DYLIB_PATH, else the onnxruntime Python package).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    pub trt_fp16: bool,
    /// TensorRT: engine and timing cache directory (engines are built once, then reused).
    #[arg(long, default_value = ".itarflow-trt-cache")]
    pub trt_cache: PathBuf,
    /// TensorRT: largest batch (rows, twice the images on guided layers) the engines' profiles cover.
    #[arg(long, default_value_t = 128)]
    pub trt_max_batch: usize,
    /// CPU threads (0 = all cores): ONNX Runtime's intra-op threads; tract splits each score
    /// batch over them.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// CUDA: TensorFloat-32 matrix products (faster, but fp32 graphs are then no longer IEEE
    /// fp32: `check` applies its TF32 tolerance). Off by default.
    #[arg(long)]
    pub tf32: bool,
    /// CUDA and TensorRT: how loops replay as CUDA graphs. step: ONNX Runtime captures each run
    /// (waiting for the GPU after each replay); loop: a loop's runs recorded as one graph, one
    /// launch and one wait per loop (CUDA; falls back to step where recording fails, and says
    /// so); off: no graphs.
    #[arg(long, default_value = "step", value_parser = ["step", "loop", "off"])]
    pub cuda_graphs: String,
    /// The same as `--cuda-graphs off`.
    #[arg(long, conflicts_with = "cuda_graphs")]
    pub no_cuda_graphs: bool,
    /// tract on the CPU, fp16 graphs: fp32 computes them in fp32 (fp16 weights widened at load,
    /// fp16 inputs and outputs kept); native in fp16, as the graphs say (fast only on CPUs with
    /// fp16 arithmetic, such as aarch64 with FP16; elsewhere ~100x slower). auto: native where
    /// the CPU has fp16 arithmetic, else fp32.
    #[arg(long, default_value = "auto", value_parser = ["auto", "native", "fp32"])]
    pub tract_f16: String,
}

impl Common {
    pub fn load(&self) -> Result<Arc<Model>> {
        let dir = self.model.clone().unwrap_or_else(demo_package);
        Ok(Arc::new(Model::load(&dir).with_context(|| format!("loading the model package {}", dir.display()))?))
    }

    pub fn options(&self) -> ProviderOptions {
        ProviderOptions {
            ort_lib: self.ort_lib.clone(),
            trt_fp16: self.trt_fp16,
            trt_cache: self.trt_cache.clone(),
            trt_max_batch: self.trt_max_batch,
            threads: self.threads,
            tf32: self.tf32,
            cuda_graphs: if self.no_cuda_graphs { CudaGraphs::Off } else { self.cuda_graphs.parse().expect("clap checked it") },
            io_binding: false,
            tract_f16: self.tract_f16(),
        }
    }

    /// How tract computes fp16 graphs on the CPU (`--tract-f16`, auto resolved for this CPU).
    pub fn tract_f16(&self) -> F16Compute {
        match self.tract_f16.as_str() {
            "native" => F16Compute::Native,
            "fp32" => F16Compute::Fp32,
            _ => F16Compute::for_this_cpu(),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision.parse().expect("clap checked it")
    }
}

/// Flags of the commands that run on one provider.
#[derive(clap::Args)]
pub struct Run {
    #[command(flatten)]
    pub common: Common,
    /// Execution provider: tract (pure Rust), cpu / cuda / tensorrt (ONNX Runtime), or auto
    /// (the best that works here, saying why the others were skipped).
    #[arg(long, value_enum, default_value = "tract")]
    pub provider: ProviderArg,
    /// Images per score evaluation (default: as many as fit --memory-budget-mib).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Memory for the score evaluations, in MiB; sizes phase 2's batches. Default: 1024 on a CPU
    /// provider, 8192 (of device memory) on a GPU one.
    #[arg(long)]
    pub memory_budget_mib: Option<usize>,
    /// Score computed by the whole-model graph, or layer by layer with the VJP graphs
    /// (memory that does not grow with depth).
    #[arg(long, value_enum, default_value = "whole")]
    pub score_form: FormArg,
    /// Run both phases as loops of the fused graphs (inversion steps and denoising step with
    /// their updates inside): on a GPU the sampler's state stays on the device and the runs
    /// replay as CUDA graphs.
    #[arg(long, value_enum, default_value = "auto")]
    pub resident: ResidentArg,
}

impl Run {
    pub fn builder(&self, model: Arc<Model>) -> SamplerBuilder {
        let mut b = Sampler::builder(model)
            .provider(self.provider.into())
            .provider_options(self.common.options())
            .precision(self.common.precision())
            .memory_budgets(self.memory_budget_mib.unwrap_or(1024) << 20, self.memory_budget_mib.unwrap_or(8192) << 20)
            .score_form(self.score_form.into());
        if let Some(on) = self.resident.setting() {
            b = b.resident(on);
        }
        match self.batch_size {
            Some(n) => b.score_batch(n),
            None => b,
        }
    }
}

impl Run {
    /// Builds the sampler, naming the provider when it cannot run, and reports what `auto` chose.
    pub fn open(&self, b: SamplerBuilder) -> Result<Sampler> {
        let sampler = b.build().with_context(|| format!("provider {} cannot run here", Provider::from(self.provider)))?;
        if matches!(self.provider, ProviderArg::Auto) {
            eprintln!("auto: using {}", sampler.provider());
            for (p, why) in sampler.skipped() {
                eprintln!("auto: skipped {p}: {why}");
            }
        }
        if sampler.provider() == Provider::Tract
            && self.common.precision() != Precision::Fp32
            && self.common.tract_f16() == F16Compute::Native
            && !itarflow_rt::provider::tract::native_f16()
        {
            eprintln!(
                "note: tract computes fp16 graphs in software on this CPU (no fp16 arithmetic): about 100x slower than \
                 fp32 (the demo's score of 8 images: 2.1 s against 14 ms on a 2-core x86 VM); --tract-f16 fp32 (the \
                 default here) computes them in fp32"
            );
        }
        Ok(sampler)
    }
}

impl From<FormArg> for ScoreForm {
    fn from(f: FormArg) -> Self {
        match f {
            FormArg::Whole => ScoreForm::Whole,
            FormArg::Layerwise => ScoreForm::Layerwise,
        }
    }
}

impl From<CacheArg> for StepCache {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::Growing => StepCache::Growing,
            CacheArg::Fixed => StepCache::Fixed,
        }
    }
}

/// The providers a `--providers` list names, or all of them when it is empty.
pub fn providers_or_all(list: &[ProviderArg]) -> Vec<Provider> {
    if list.is_empty() { Provider::ALL.to_vec() } else { list.iter().map(|&p| p.into()).collect() }
}

/// Images `x` (B, C, H, W) and labels `y` (B,) (default: unconditional) of an npz, checked
/// against the model.
pub fn images_and_labels(npz: &Npz, model: &Model) -> Result<([usize; 4], ndarray::Array4<f32>, Vec<i64>)> {
    let c = &model.manifest.model;
    let (shape, x) = inputs::images(npz, "x", c)?;
    let y = inputs::labels(npz, shape[0], c.num_classes)?.unwrap_or_else(|| vec![-1; shape[0]]);
    Ok((shape, ndarray::Array4::from_shape_vec(shape, x)?, y))
}

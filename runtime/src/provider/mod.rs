//! Execution providers, one file each. A provider loads a graph and runs it on its own value
//! type, so that outputs (e.g. a step's present K/V) can feed the next run without a copy
//! through host memory.

pub mod ort;
pub mod tract;

use std::path::PathBuf;

use crate::RtError;

/// Where graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// tract: pure Rust, CPU, nothing to install.
    Tract,
    /// ONNX Runtime on the CPU.
    Cpu,
    /// ONNX Runtime's CUDA execution provider.
    Cuda,
    /// ONNX Runtime's TensorRT execution provider.
    TensorRt,
    /// The first of TensorRT, CUDA, ONNX Runtime CPU and tract that loads here.
    Auto,
}

impl Provider {
    /// The order `Auto` tries.
    pub const PREFERENCE: [Provider; 4] = [Provider::TensorRt, Provider::Cuda, Provider::Cpu, Provider::Tract];
    /// Every concrete provider, CPU ones first (what `check` and `bench` cover by default).
    pub const ALL: [Provider; 4] = [Provider::Tract, Provider::Cpu, Provider::Cuda, Provider::TensorRt];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Tract => "tract",
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Provider {
    type Err = RtError;
    fn from_str(s: &str) -> Result<Self, RtError> {
        Ok(match s {
            "tract" => Provider::Tract,
            "cpu" => Provider::Cpu,
            "cuda" => Provider::Cuda,
            "tensorrt" => Provider::TensorRt,
            "auto" => Provider::Auto,
            other => return Err(RtError::Invalid(format!("unknown provider '{other}': use tract, cpu, cuda, tensorrt or auto"))),
        })
    }
}

/// Graph precision of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Fp16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = RtError;
    fn from_str(s: &str) -> Result<Self, RtError> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            other => Err(RtError::Invalid(format!("unknown precision '{other}': use fp32 or fp16"))),
        }
    }
}

/// Settings of the ONNX Runtime providers.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderOptions {
    /// libonnxruntime to load (default: `ORT_DYLIB_PATH`, else the onnxruntime Python package).
    pub ort_lib: Option<PathBuf>,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT: engine and timing cache directory.
    pub trt_cache: PathBuf,
    /// TensorRT: largest batch (rows) the optimisation profiles cover.
    pub trt_max_batch: usize,
    /// CPU threads (0 = all cores): ONNX Runtime's intra-op threads; tract (single-threaded per
    /// run) splits each score batch over this many threads.
    pub threads: usize,
}

impl ProviderOptions {
    /// `threads`, with 0 resolved to the number of cores.
    pub fn threads(&self) -> usize {
        if self.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { self.threads }
    }
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self { ort_lib: None, trt_fp16: false, trt_cache: PathBuf::from(".itarflow-trt-cache"), trt_max_batch: 128, threads: 0 }
    }
}

/// A tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(s, _) | HostTensor::I64(s, _) => s,
        }
    }

    /// The f32 data; panics on an int64 tensor (graph outputs are f32).
    pub fn f32(&self) -> &[f32] {
        match self {
            HostTensor::F32(_, d) => d,
            HostTensor::I64(..) => panic!("expected an f32 tensor"),
        }
    }

    pub fn into_f32(self) -> Vec<f32> {
        match self {
            HostTensor::F32(_, d) => d,
            HostTensor::I64(..) => panic!("expected an f32 tensor"),
        }
    }
}

/// Runs `graph` on host tensors and returns host tensors (checks and one-off calls).
pub fn run_host<E: Engine>(graph: &E, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RtError> {
    let values = inputs.iter().map(|t| graph.upload(t)).collect::<Result<Vec<_>, _>>()?;
    let outs = graph.run_values(values.iter().collect())?;
    outs.iter().map(|v| graph.download(v)).collect()
}

/// A loaded graph on some provider.
pub trait Engine: Send + Sync {
    type Value;
    fn upload(&self, t: &HostTensor) -> Result<Self::Value, RtError>;
    fn download(&self, v: &Self::Value) -> Result<HostTensor, RtError>;
    /// Runs the graph on inputs in the graph's input order; outputs in its output order.
    fn run_values(&self, inputs: Vec<&Self::Value>) -> Result<Vec<Self::Value>, RtError>;
    /// Whether runs of this graph from several threads proceed in parallel (tract: each run has
    /// its own state); false where runs are serialised and the engine parallelises inside a run.
    fn concurrent(&self) -> bool {
        false
    }
    /// Makes ready what running on `batch` rows needs, so that the first such run does not pay
    /// for it (tract: the optimised plan for that batch size). A no-op by default.
    fn prepare(&self, _batch: usize) -> Result<(), RtError> {
        Ok(())
    }
}

//! Execution providers, one file each. A provider loads a graph and runs it on its own value
//! type, so that outputs (e.g. a step's present K/V) can feed the next run without a copy
//! through host memory.

pub mod cuda_loop;
pub mod denormals;
pub mod ort;
pub mod tract;

use std::path::PathBuf;

use itarflow_base::manifest::GraphKind;

use crate::RtError;

/// Where graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// tract: pure Rust, CPU, nothing to install.
    Tract,
    /// tract's CUDA runtime (tract-cuda): pure Rust, loads CUDA, cuBLAS, cuDNN and NVRTC from the
    /// host at run time; needs no ONNX Runtime.
    TractCuda,
    /// ONNX Runtime on the CPU.
    Cpu,
    /// ONNX Runtime's CUDA execution provider.
    Cuda,
    /// ONNX Runtime's TensorRT execution provider.
    TensorRt,
    /// The first of TensorRT, CUDA, tract-cuda, ONNX Runtime CPU and tract that loads here.
    Auto,
}

impl Provider {
    /// The order `Auto` tries.
    pub const PREFERENCE: [Provider; 5] = [Provider::TensorRt, Provider::Cuda, Provider::TractCuda, Provider::Cpu, Provider::Tract];
    /// Every concrete provider, CPU ones first (what `check` and `bench` cover by default).
    pub const ALL: [Provider; 5] = [Provider::Tract, Provider::Cpu, Provider::Cuda, Provider::TensorRt, Provider::TractCuda];

    /// Whether graphs run on a GPU.
    pub fn is_gpu(self) -> bool {
        matches!(self, Provider::Cuda | Provider::TensorRt | Provider::TractCuda)
    }

    /// Whether the provider keeps values in device memory between runs, so that the sampler's
    /// loops run there (ONNX Runtime's GPU providers; tract-cuda brings outputs back each run).
    pub fn device_resident(self) -> bool {
        matches!(self, Provider::Cuda | Provider::TensorRt)
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Tract => "tract",
            Provider::TractCuda => "tract-cuda",
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
            "tract-cuda" => Provider::TractCuda,
            "cpu" => Provider::Cpu,
            "cuda" => Provider::Cuda,
            "tensorrt" => Provider::TensorRt,
            "auto" => Provider::Auto,
            other => {
                return Err(RtError::Setting(format!("unknown provider '{other}': use tract, tract-cuda, cpu, cuda, tensorrt or auto")));
            }
        })
    }
}

/// Graph precision of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Fp16,
    /// Phase 1 in fp32 (the conditioning, step and inversion graphs: the autoregressive
    /// inversion feeds each token's rounding into every later token) and phase 2 in fp16 (the
    /// score, denoising-step and layer-wise score graphs: ten independent Euler steps whose
    /// cost is memory traffic, which fp16 halves). Needs a package exported with both.
    Mixed,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Mixed => "mixed",
        }
    }

    /// The precision of the graphs of `kind` (fp32 or fp16; [`Precision::Mixed`] picks by
    /// phase).
    pub fn of(self, kind: GraphKind) -> Precision {
        match (self, kind) {
            (Precision::Mixed, GraphKind::Score | GraphKind::DenoiseStep | GraphKind::Forward | GraphKind::LayerVjp) => Precision::Fp16,
            (Precision::Mixed, _) => Precision::Fp32,
            (p, _) => p,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = RtError;
    fn from_str(s: &str) -> Result<Self, RtError> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "mixed" => Ok(Precision::Mixed),
            other => Err(RtError::Setting(format!("unknown precision '{other}': use fp32, fp16 or mixed"))),
        }
    }
}

/// How loops run on ONNX Runtime's GPU providers (CUDA and TensorRT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CudaGraphs {
    /// Each run a kernel launch at a time.
    Off,
    /// ONNX Runtime captures each run of a loop as a CUDA graph and replays it (one graph per
    /// binding and loop shape), waiting for the GPU after every replay. A graph it cannot
    /// capture runs without.
    Step,
    /// A loop's runs recorded once as one CUDA graph from a stream of the session's own, replayed
    /// with one launch and one wait per loop (CUDA provider; [`cuda_loop`]). Where recording
    /// fails, the session falls back to `Step` and says why.
    Loop,
}

impl CudaGraphs {
    pub fn name(self) -> &'static str {
        match self {
            CudaGraphs::Off => "off",
            CudaGraphs::Step => "step",
            CudaGraphs::Loop => "loop",
        }
    }
}

impl std::str::FromStr for CudaGraphs {
    type Err = RtError;
    fn from_str(s: &str) -> Result<Self, RtError> {
        match s {
            "off" => Ok(CudaGraphs::Off),
            "step" => Ok(CudaGraphs::Step),
            "loop" => Ok(CudaGraphs::Loop),
            other => Err(RtError::Setting(format!("unknown CUDA graph mode '{other}': use step, loop or off"))),
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
    /// CUDA: TensorFloat-32 matrix products (faster; inputs rounded to 10 mantissa bits, so
    /// fp32 is no longer IEEE fp32: `check` applies the TF32 tolerance). Off by default.
    pub tf32: bool,
    /// CUDA and TensorRT: how the loop graphs (fused inversion and denoising steps) replay as
    /// CUDA graphs (see [`CudaGraphs`]).
    pub cuda_graphs: CudaGraphs,
    /// ONNX Runtime on the CPU: bind inputs and outputs through IoBinding and run loops in
    /// buffers of their own, as on a GPU (for tests of that code path on CPU machines).
    pub io_binding: bool,
    /// tract on the CPU: how fp16 graphs compute (default: this CPU's, [`tract::F16Compute::for_this_cpu`]).
    pub tract_f16: tract::F16Compute,
}

impl ProviderOptions {
    /// `threads`, with 0 resolved to the number of cores.
    pub fn threads(&self) -> usize {
        if self.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { self.threads }
    }
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            ort_lib: None,
            trt_fp16: false,
            trt_cache: PathBuf::from(".itarflow-trt-cache"),
            trt_max_batch: 128,
            threads: 0,
            tf32: false,
            cuda_graphs: CudaGraphs::Step,
            io_binding: false,
            tract_f16: tract::F16Compute::for_this_cpu(),
        }
    }
}

/// A tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32(Vec<usize>, Vec<f32>),
    F16(Vec<usize>, Vec<half::f16>),
    I64(Vec<usize>, Vec<i64>),
}

impl HostTensor {
    /// Zeros of `shape` in the manifest's `dtype` ("float32", "float16" or "int64").
    pub fn zeros(dtype: &str, shape: Vec<usize>) -> Result<Self, RtError> {
        let n = shape.iter().product();
        Ok(match dtype {
            "float32" => HostTensor::F32(shape, vec![0.0; n]),
            "float16" => HostTensor::F16(shape, vec![half::f16::ZERO; n]),
            "int64" => HostTensor::I64(shape, vec![0; n]),
            other => return Err(RtError::Package(format!("no host tensors of dtype {other}"))),
        })
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(s, _) | HostTensor::F16(s, _) | HostTensor::I64(s, _) => s,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            HostTensor::F32(..) => "float32",
            HostTensor::F16(..) => "float16",
            HostTensor::I64(..) => "int64",
        }
    }

    /// The data of a float32 tensor (what the engines' `download` returns for float outputs).
    pub fn f32(&self) -> Result<&[f32], RtError> {
        match self {
            HostTensor::F32(_, d) => Ok(d),
            other => Err(RtError::Internal(format!("expected a float32 tensor, got {} {:?}", other.kind(), other.shape()))),
        }
    }

    /// The values as f32 (float16 widened).
    pub fn into_f32(self) -> Result<Vec<f32>, RtError> {
        match self {
            HostTensor::F32(_, d) => Ok(d),
            HostTensor::F16(_, d) => Ok(d.into_iter().map(f32::from).collect()),
            other => Err(RtError::Internal(format!("expected a float tensor, got {} {:?}", other.kind(), other.shape()))),
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
    /// Runs a loop body (a graph whose outputs are its next run's state: its last
    /// `state.len()` inputs, in order) `steps` times from `state`, the `fixed` inputs before the
    /// state unchanged throughout; returns the first `keep` values of the final state on the
    /// host. By default each run's outputs are fed to the next as they are; a GPU engine keeps
    /// the state on the device in buffers of its own and may replay the runs as a captured graph.
    fn run_loop(
        &self,
        fixed: &[&Self::Value],
        state: Vec<LoopInit<Self::Value>>,
        steps: usize,
        keep: usize,
    ) -> Result<Vec<HostTensor>, RtError>
    where
        Self: Sized,
    {
        feed_loop(self, fixed, state, steps, keep)
    }
    /// How this graph runs loops, when it differs from run-by-run feeding (e.g. on device
    /// buffers with CUDA graphs), or why a faster way was refused; None for the default.
    fn loop_mode(&self) -> Option<String> {
        None
    }
}

/// A loop run by feeding each run's outputs to the next as they are (see [`Engine::run_loop`]).
pub fn feed_loop<E: Engine>(
    g: &E,
    fixed: &[&E::Value],
    state: Vec<LoopInit<E::Value>>,
    steps: usize,
    keep: usize,
) -> Result<Vec<HostTensor>, RtError> {
    {
        let mut values = state
            .into_iter()
            .map(|s| match s {
                LoopInit::Value(v) => Ok(v),
                LoopInit::Host(t) => g.upload(&t),
                LoopInit::Zeros(dtype, shape) => g.upload(&HostTensor::zeros(&dtype, shape)?),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n = values.len();
        for _ in 0..steps {
            let mut feeds: Vec<&E::Value> = fixed.to_vec();
            feeds.extend(values.iter());
            values = g.run_values(feeds)?;
            if values.len() != n {
                return Err(RtError::Package(format!("a loop body returned {} values for a state of {n}", values.len())));
            }
        }
        values.iter().take(keep).map(|v| g.download(v)).collect()
    }
}

/// The initial value of one loop state input: an engine value (e.g. another graph's output),
/// host data to upload (the tokens to invert), or zeros (an empty KV cache: made where the loop
/// runs, so that a GPU loop neither builds nor sends them from the host each layer).
pub enum LoopInit<V> {
    Value(V),
    Host(HostTensor),
    /// Zeros of a manifest dtype (`float32`, `float16`, `int64`) and shape.
    Zeros(String, Vec<usize>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_their_names_and_refuse_others_with_the_choices() {
        for g in [CudaGraphs::Off, CudaGraphs::Step, CudaGraphs::Loop] {
            assert_eq!(g.name().parse::<CudaGraphs>().unwrap(), g);
        }
        for p in [Precision::Fp32, Precision::Fp16, Precision::Mixed] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "graph".parse::<CudaGraphs>().unwrap_err().to_string();
        assert!(e.contains("step, loop or off"), "{e}");
        let e = "bf16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp32, fp16 or mixed"), "{e}");
    }

    #[test]
    fn mixed_precision_runs_phase_two_graphs_in_fp16_and_the_rest_in_fp32() {
        use GraphKind::*;
        let fp16 = [Score, DenoiseStep, Forward, LayerVjp];
        let fp32 = [Cond, Step, StepFixed, Invert, InvertGuided, InvertGuidedStarflow];
        assert_eq!(fp16.len() + fp32.len(), GraphKind::ALL.len(), "every kind is placed");
        for (kinds, want) in [(&fp16[..], Precision::Fp16), (&fp32[..], Precision::Fp32)] {
            for &kind in kinds {
                assert_eq!(Precision::Mixed.of(kind), want, "{kind:?}");
                assert_eq!(Precision::Fp16.of(kind), Precision::Fp16);
                assert_eq!(Precision::Fp32.of(kind), Precision::Fp32);
            }
        }
    }
}

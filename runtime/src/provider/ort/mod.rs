//! The ONNX Runtime provider (CPU, CUDA, TensorRT), through `ort` with `load-dynamic`: the
//! library is loaded at run time from an explicit path, `ORT_DYLIB_PATH`, or the `onnxruntime`
//! Python package, so nothing is downloaded at build time. A requested CUDA or TensorRT provider
//! that cannot register is an error carrying ONNX Runtime's reason, never a silent CPU fallback.
//!
//! One file per concern: the library and its environment (`library`), one per execution
//! provider with its options (`cpu`, `cuda`, `tensorrt`), the session they make (`session`), a
//! graph and its runs (`graph`), and loops in device buffers replayed as CUDA graphs (`loops`).

mod cpu;
mod cuda;
mod graph;
mod library;
mod loops;
mod session;
mod tensorrt;

use std::path::PathBuf;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

use super::CudaGraphs;
use crate::RtError;

pub use graph::OrtGraph;
pub use library::{environment, find_library};
pub use tensorrt::{TrtProfiles, trt_profiles};

/// The ONNX Runtime devices.
#[derive(Debug, Clone, PartialEq)]
pub enum OrtDevice {
    Cpu,
    Cuda {
        /// TensorFloat-32 matrix products (10-bit mantissa inputs): faster, not IEEE fp32.
        tf32: bool,
    },
    TensorRt {
        fp16: bool,
        /// Engines (and the timing cache) are built once and reused from here.
        cache_dir: PathBuf,
        /// Optimisation profile of the graph's dynamic inputs (see [`trt_profiles`]).
        profiles: Option<TrtProfiles>,
    },
}

impl OrtDevice {
    /// Whether graphs run on a GPU (values then stay in device memory between runs).
    pub fn is_gpu(&self) -> bool {
        !matches!(self, OrtDevice::Cpu)
    }

    pub fn name(&self) -> &'static str {
        match self {
            OrtDevice::Cpu => "cpu",
            OrtDevice::Cuda { .. } => "cuda",
            OrtDevice::TensorRt { .. } => "tensorrt",
        }
    }
}

fn fail(provider: &str, reason: impl std::fmt::Display) -> RtError {
    RtError::Provider { provider: provider.into(), reason: reason.to_string() }
}

/// How a graph is loaded: device, library and threads, and whether loop runs are captured as
/// CUDA graphs.
#[derive(Debug, Clone)]
pub struct OrtLoad {
    pub device: OrtDevice,
    pub library: Option<PathBuf>,
    /// Intra-op threads (spinning within a run, asleep between runs: the sampler holds some
    /// thirty sessions, and spinning pools of idle sessions would take the cores from the one
    /// running).
    pub threads: usize,
    /// How loops replay as CUDA graphs (CUDA and TensorRT; meant for loop graphs).
    pub cuda_graphs: CudaGraphs,
    /// Bind inputs and outputs through IoBinding and run loops in buffers of their own even on
    /// the CPU (always on a GPU): the GPU's code path, exercised by the tests of CPU machines.
    pub io_binding: bool,
    /// CPU: give the arena's memory back after every run (ONNX Runtime's arena shrinkage)
    /// instead of keeping it for the next. For graphs whose point is bounded memory (the
    /// layer-wise score's forward and VJP graphs, one layer at a time): kept arenas of every
    /// layer's graphs held 2.4 GiB for the S-sized model's layer-wise score of 4 images instead
    /// of 1.4 GiB. Kept, the next run's pages need not fault in again (the demo's whole-model
    /// score: 47 ms instead of 61 ms).
    pub release_memory: bool,
}

impl OrtLoad {
    /// Whether runs go through IoBinding (outputs in the device's memory).
    pub(super) fn bound(&self) -> bool {
        self.io_binding || self.device.is_gpu()
    }

    /// The memory outputs and loop buffers live in.
    pub(super) fn memory(&self) -> Result<MemoryInfo<'static>, ort::Error> {
        if self.device.is_gpu() {
            MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default)
        } else {
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
        }
    }

    /// An allocator of that memory for `session`'s values.
    pub(super) fn allocator(&self, session: &Session) -> Result<Allocator, ort::Error> {
        if self.device.is_gpu() { Allocator::new(session, self.memory()?) } else { Ok(Allocator::default()) }
    }
}

//! The ONNX Runtime provider (CPU, CUDA, TensorRT), through `ort` with `load-dynamic`: the
//! library is loaded at run time from an explicit path, `ORT_DYLIB_PATH`, or the `onnxruntime`
//! Python package, so nothing is downloaded at build time. A requested CUDA or TensorRT provider
//! that cannot register is an error carrying ONNX Runtime's reason, never a silent CPU fallback.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::{IoBinding, RunOptions, Session};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType, ValueType};

use super::cuda_loop::{LoopGraph, LoopStream};
use super::{CudaGraphs, Engine, HostTensor, LoopInit};
use crate::RtError;

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

/// TensorRT optimisation profile shapes, in ONNX Runtime's `name:AxBxC,name:...` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtProfiles {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// The optimisation profile of a graph whose inputs are `inputs` (from the manifest): the batch
/// symbol "N" spans 1..=`max_batch` (optimised for `max_batch`), the cached-token symbol "P"
/// spans 0..=`tokens` - 1 (optimised for the middle), the denoising levels "K" 2..=1001
/// (optimised for 11: ten steps), numbers stay. None when every input is static.
pub fn trt_profiles(inputs: &[itarflow_base::manifest::TensorSpec], tokens: usize, max_batch: usize) -> Option<TrtProfiles> {
    let dim = |d: &serde_json::Value, which: usize| -> usize {
        match (d.as_u64(), d.as_str()) {
            (Some(n), _) => n as usize,
            (_, Some("P")) => [0, tokens / 2, tokens.saturating_sub(1)][which],
            (_, Some("K")) => [2, 11, 1001][which],
            (_, _) => [1, max_batch, max_batch][which],
        }
    };
    let dynamic: Vec<_> = inputs.iter().filter(|i| i.shape.iter().any(|d| d.is_string())).collect();
    if dynamic.is_empty() {
        return None;
    }
    let shapes = |which: usize| {
        dynamic
            .iter()
            .map(|i| format!("{}:{}", i.name, i.shape.iter().map(|d| dim(d, which).to_string()).collect::<Vec<_>>().join("x")))
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(TrtProfiles { min: shapes(0), opt: shapes(1), max: shapes(2) })
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

/// Where libonnxruntime is: `explicit`, else `ORT_DYLIB_PATH`, else the `onnxruntime` Python
/// package's `capi/` directory.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RtError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let python =
        std::process::Command::new("python3").args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"]).output();
    if let Ok(out) = python
        && out.status.success()
    {
        let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
        if let Ok(entries) = std::fs::read_dir(&capi) {
            let mut libs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            if let Some(lib) = libs.into_iter().next() {
                return Ok(lib);
            }
        }
    }
    Err(fail(
        "onnxruntime",
        "the ONNX Runtime library was not found: set ORT_DYLIB_PATH to libonnxruntime.so, or install it with \
         `pip install onnxruntime==1.31.1` (CPU) or `pip install onnxruntime-gpu==1.31.1` (CUDA and TensorRT; \
         TensorRT also needs libnvinfer 10 from NVIDIA's index)",
    ))
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (ort's one global), loaded on first use.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment, RtError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = find_library(library).map_err(|e| e.to_string())?;
        if !path.exists() {
            return Err(format!("ONNX Runtime library {} does not exist (from ORT_DYLIB_PATH or --ort-lib)", path.display()));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("itarflow-rt")
            .build()
            .map_err(|e| format!("cannot create the environment: {e}"))
    });
    env.as_ref().map_err(|e| fail("onnxruntime", e))
}

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};

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
    fn bound(&self) -> bool {
        self.io_binding || self.device.is_gpu()
    }

    /// The memory outputs and loop buffers live in.
    fn memory(&self) -> Result<MemoryInfo<'static>, ort::Error> {
        if self.device.is_gpu() {
            MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default)
        } else {
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
        }
    }

    /// An allocator of that memory for `session`'s values.
    fn allocator(&self, session: &Session) -> Result<Allocator, ort::Error> {
        if self.device.is_gpu() { Allocator::new(session, self.memory()?) } else { Ok(Allocator::default()) }
    }
}

/// A loop's device buffers: the fixed inputs, two sets of state (a run reads one set and writes
/// the other), device zeros for state started from zeros, and the two bindings (A -> B,
/// B -> A), each with the run options that select its own captured CUDA graph.
///
/// State updated in place (the KV caches: an input `past_*` whose output `present_*` is the
/// input with one slot written) has one buffer, bound as both the input and the output of both
/// bindings: ONNX Runtime's ScatterElements copies its data input to its output only when they
/// are different buffers, so a step writes its token's keys and values and nothing else (CUDA
/// and CPU; TensorRT keeps two buffers).
struct LoopBuffers {
    key: Vec<(TensorElementType, Vec<i64>)>,
    fixed: Vec<DynTensor>,
    a: Vec<DynTensor>,
    /// None for state updated in place (its buffer is in `a`).
    b: Vec<Option<DynTensor>>,
    zeros: Vec<Option<DynTensor>>,
    bindings: [IoBinding; 2],
    options: [RunOptions; 2],
    /// Its runs are captured as CUDA graphs (under graph ids of their own), or on a session
    /// that records whole loops, recorded.
    captured: bool,
    /// The loop recorded as one graph per number of steps, oldest first (whole-loop sessions;
    /// at most [`MAX_RECORDED_STEPS`]: a server's denoising requests choose their steps).
    recorded: Vec<(usize, LoopGraph)>,
}

/// A session, whether it captures CUDA graphs, and the loops it has run (their buffers are kept
/// for later loops of the same shapes, so that captured graphs replay on the same addresses).
struct SessionState {
    session: Session,
    /// Ok when ONNX Runtime captures and replays each loop run as a CUDA graph; else why not.
    cuda_graph: Result<(), String>,
    /// The session's own stream, on a session that records whole loops (`--cuda-graphs loop`);
    /// declared after the session, so that the session (which runs on it) goes first.
    whole: Option<LoopStream>,
    /// Why a session asked to record whole loops does not (it captures runs instead).
    whole_refused: Option<String>,
    /// Options of runs outside loops (annotation -1, no capture, on a CUDA-graph session).
    plain: RunOptions,
    loops: Vec<LoopBuffers>,
    next_graph_id: i64,
}

/// Loop shapes a CUDA-graph session captures, at most. ONNX Runtime keeps a captured graph for
/// as long as the session lives (graph ids cannot be captured again), so the loops of captured
/// graphs are never dropped, and shapes past these run without capture: a server merging
/// requests into batches of every size would otherwise capture (and hold) a graph per size.
const MAX_CAPTURED_LOOPS: usize = 8;
/// Loop shapes without capture whose buffers a session keeps (the oldest dropped first).
const MAX_UNCAPTURED_LOOPS: usize = 4;
/// Step counts a whole-loop session keeps a recorded graph of, per loop shape (the oldest
/// dropped first).
const MAX_RECORDED_STEPS: usize = 4;

/// A graph in an ONNX Runtime session. On a GPU, inputs and outputs are bound through
/// IoBinding and outputs stay in device memory, feeding later runs without a copy; only
/// `download` brings values to the host.
pub struct OrtGraph {
    state: Mutex<SessionState>,
    outputs: Vec<String>,
    inputs: Vec<String>,
    provider: &'static str,
    path: PathBuf,
    load: OrtLoad,
}

/// A session for `path`: ONNX Runtime's per-run CUDA graphs if `cuda_graph`, its kernels on
/// `stream` if given (whole-loop recording; CUDA only).
fn session(path: &Path, load: &OrtLoad, cuda_graph: bool, stream: Option<&LoopStream>) -> Result<Session, RtError> {
    let p = load.device.name();
    // The library's failure is this provider's: name the provider the caller asked for.
    let env = environment(load.library.as_deref()).map_err(|e| match e {
        RtError::Provider { reason, .. } => fail(p, reason),
        other => other,
    })?;
    let ep = match &load.device {
        // The arena on (`ort` turns it off by default): without it every intermediate tensor is
        // a fresh allocation whose pages fault in on first touch: the demo's score graph took
        // 74 ms at batch 16 instead of 58 ms. Its memory pattern is off below.
        OrtDevice::Cpu => ort::ep::CPU::default().with_arena_allocator(true).build(),
        // Arenas grow by what is asked, not by doubling: the sampler holds some twenty sessions,
        // and doubling arenas held 5.8 GiB of GPU memory for the demo model at batch 16.
        OrtDevice::Cuda { tf32 } => {
            let cuda = ort::ep::CUDA::default()
                .with_tf32(*tf32)
                .with_cuda_graph(cuda_graph)
                .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
            match stream {
                // SAFETY: the stream outlives the session (`SessionState` drops the session first).
                Some(s) => unsafe { cuda.with_compute_stream(s.raw()) }.build(),
                None => cuda.build(),
            }
        }
        OrtDevice::TensorRt { fp16, cache_dir, profiles } => {
            let mut trt = ort::ep::TensorRT::default()
                .with_fp16(*fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(cache_dir.display())
                .with_timing_cache(true)
                .with_timing_cache_path(cache_dir.display())
                .with_cuda_graph(cuda_graph);
            if let Some(p) = profiles {
                trt = trt.with_profile_min_shapes(&p.min).with_profile_opt_shapes(&p.opt).with_profile_max_shapes(&p.max);
            }
            trt.build()
        }
    }
    .error_on_failure();
    let threads = load.threads.max(1);
    let mut builder = Session::builder(env)
        .map_err(|e| fail(p, e))?
        .with_intra_threads(threads)
        .map_err(|e| fail(p, e))?
        // Workers spin between the operators of a run (waking a sleeping thread for each of a
        // score graph's ~1,100 nodes: 58 ms instead of 47 ms) and sleep once the run ends, so
        // the idle pools of the sampler's other sessions take no core from the one running.
        .with_intra_op_spinning(true)
        .map_err(|e| fail(p, e))?
        .with_config_entry("session.force_spinning_stop", "1")
        .map_err(|e| fail(p, e))?
        .with_execution_providers([ep])
        .map_err(|e| fail(p, e))?;
    if matches!(load.device, OrtDevice::Cpu) {
        // The memory pattern allocates a whole run's activations as one block planned from the
        // previous run of the shape; in the arena that block fits none of the first run's freed
        // chunks, so the arena grows by it: the s64 score graph at batch 4 then held 2.5 GiB
        // instead of 1.6 GiB, at the same speed.
        builder = builder.with_memory_pattern(false).map_err(|e| fail(p, e))?;
        // Subnormals (the score's backward makes them: exp(-s^2) in the GELU derivative) flushed
        // to zero in the session's threads: each product with one costs a microcode assist.
        // Demo score on one thread 63.5 -> 60.6 ms, sampling 22.5 -> 23.9 images/s (the caller's
        // share of a run is flushed in `run_values`: without it 70.6 against 64.4 ms).
        builder = builder.with_config_entry("session.set_denormal_as_zero", "1").map_err(|e| fail(p, e))?;
    }
    if let Some(prefix) = profile_prefix(path) {
        builder = builder.with_profiling(prefix).map_err(|e| fail(p, e))?;
    }
    // ONNX Runtime sets the flush-to-zero mode on the thread creating its first session for good;
    // the caller's mode is put back (runs set it for their duration, `denormals`).
    let _keep = super::denormals::KeepMode::new();
    builder.commit_from_file(path).map_err(|e| fail(p, format!("{}: {e}", path.display())))
}

/// ONNX Runtime's per-node profile for graphs whose file name contains PATTERN, from
/// `ITARFLOW_ORT_PROFILE=PATTERN:PREFIX` (a JSON trace per session, `PREFIX<graph>_<date>.json`,
/// written when the session ends): where a GPU's time goes, kernel by kernel.
fn profile_prefix(path: &Path) -> Option<PathBuf> {
    let spec = std::env::var("ITARFLOW_ORT_PROFILE").ok()?;
    let (pattern, prefix) = spec.split_once(':')?;
    let stem = path.file_stem()?.to_string_lossy();
    stem.contains(pattern).then(|| PathBuf::from(format!("{prefix}{stem}")))
}

/// Run options: on a CUDA-graph session, the graph annotation `id` (-1: neither capture nor
/// replay); `async_run` returns before the device finishes (the caller synchronises).
fn run_options(graph_id: Option<i64>, async_run: bool) -> Result<RunOptions, ort::Error> {
    let mut o = RunOptions::new()?;
    if let Some(id) = graph_id {
        o.set("gpu_graph_id", id.to_string())?;
    }
    if async_run {
        o.disable_device_sync()?;
    }
    Ok(o)
}

fn value_key(v: &DynValue) -> Result<(TensorElementType, Vec<i64>), ort::Error> {
    match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok((*ty, shape.to_vec())),
        other => Err(ort::Error::new(format!("loop inputs must be tensors, got {other:?}"))),
    }
}

fn host_key(t: &HostTensor) -> (TensorElementType, Vec<i64>) {
    let ty = match t {
        HostTensor::F32(..) => TensorElementType::Float32,
        HostTensor::F16(..) => TensorElementType::Float16,
        HostTensor::I64(..) => TensorElementType::Int64,
    };
    (ty, t.shape().iter().map(|&d| d as i64).collect())
}

/// The element type of a manifest dtype name.
fn element_type(dtype: &str) -> Result<TensorElementType, ort::Error> {
    match dtype {
        "float32" => Ok(TensorElementType::Float32),
        "float16" => Ok(TensorElementType::Float16),
        "int64" => Ok(TensorElementType::Int64),
        other => Err(ort::Error::new(format!("no loop state of dtype {other}"))),
    }
}

fn host_value(t: &HostTensor) -> Result<DynValue, ort::Error> {
    match t {
        HostTensor::F32(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
        HostTensor::F16(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
        HostTensor::I64(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
    }
}

/// Copies `src` (host or device) into the device buffer `dst` (synchronously).
fn copy_to(src: &DynValue, dst: &mut DynTensor) -> Result<(), ort::Error> {
    src.view().downcast::<DynTensorValueType>()?.copy_into(&mut *dst)
}

/// Whether a loop's state input `input` with output `output` is updated in place (a KV cache).
fn in_place(input: &str, output: &str) -> bool {
    input.strip_prefix("past_").is_some_and(|k| output.strip_prefix("present_") == Some(k))
}

/// Binds `fixed` then the state to the inputs and the state to the outputs: read from A and
/// written to B (`a_to_b`), or the other way; state without a B buffer is read from and written
/// to its A buffer.
fn bind(
    session: &Session,
    names: (&[String], &[String]),
    fixed: &[DynTensor],
    a: &mut [DynTensor],
    b: &mut [Option<DynTensor>],
    a_to_b: bool,
) -> Result<IoBinding, ort::Error> {
    let (inputs, outputs) = names;
    let mut binding = session.create_binding()?;
    for (name, v) in inputs.iter().zip(fixed) {
        binding.bind_input(name, v)?;
    }
    for (k, name) in inputs[fixed.len()..].iter().enumerate() {
        match &b[k] {
            Some(bk) if !a_to_b => binding.bind_input(name, bk)?,
            _ => binding.bind_input(name, &a[k])?,
        }
    }
    for (k, name) in outputs.iter().enumerate().take(a.len()) {
        match &mut b[k] {
            Some(bk) if a_to_b => binding.bind_output(name, bk)?,
            _ => binding.bind_output(name, &mut a[k])?,
        }
    }
    Ok(binding)
}

impl SessionState {
    fn new(session: Session, cuda_graph: Result<(), String>, release_memory: bool) -> Result<Self, ort::Error> {
        let mut plain = run_options(cuda_graph.is_ok().then_some(-1), false)?;
        if release_memory {
            plain.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
        }
        Ok(Self { session, cuda_graph, whole: None, whole_refused: None, plain, loops: Vec::new(), next_graph_id: 1 })
    }

    /// A session whose loops are recorded whole on `stream`.
    fn whole(session: Session, stream: LoopStream) -> Result<Self, ort::Error> {
        let mut st = Self::new(session, Err("whole loops recorded instead".into()), false)?;
        st.whole = Some(stream);
        Ok(st)
    }

    /// Whether loops of new shapes are captured or recorded (up to [`MAX_CAPTURED_LOOPS`]).
    fn captures(&self) -> bool {
        self.cuda_graph.is_ok() || self.whole.is_some()
    }
}

/// A session's state with ONNX Runtime's per-run CUDA graphs if `capture` is Ok (without, and
/// saying why, where ONNX Runtime refuses them at load), or without any for the reason it holds.
fn capture_or_not(path: &Path, load: &OrtLoad, capture: Result<(), String>, release_memory: bool) -> Result<SessionState, RtError> {
    let p = load.device.name();
    let (session, cuda_graph) = match capture {
        Ok(()) => match session(path, load, true, None) {
            Ok(s) => (s, Ok(())),
            Err(e) => (session(path, load, false, None)?, Err(format!("refused at load: {e}"))),
        },
        Err(why) => (session(path, load, false, None)?, Err(why)),
    };
    SessionState::new(session, cuda_graph, release_memory).map_err(|e| fail(p, e))
}

impl OrtGraph {
    /// Creates a session for the graph at `path` on `device` (strict provider registration).
    pub fn load(path: &Path, device: &OrtDevice, library: Option<&Path>) -> Result<Self, RtError> {
        let load = OrtLoad {
            device: device.clone(),
            library: library.map(Path::to_path_buf),
            threads: 1,
            cuda_graphs: CudaGraphs::Off,
            io_binding: false,
            release_memory: false,
        };
        Self::load_with(path, &load)
    }

    /// Creates a session as `load` says. Where CUDA graphs are asked for but the session cannot
    /// have them, it is made without, and [`Engine::loop_mode`] says why.
    pub fn load_with(path: &Path, load: &OrtLoad) -> Result<Self, RtError> {
        let p = load.device.name();
        let gpu = load.device.is_gpu();
        let mut whole_refused = None;
        if gpu && load.cuda_graphs == CudaGraphs::Loop {
            let stream = match load.device {
                OrtDevice::Cuda { .. } => LoopStream::new(),
                _ => Err("whole loops are recorded on the CUDA provider only".to_string()),
            };
            match stream {
                Ok(stream) => {
                    let s = session(path, load, false, Some(&stream))?;
                    let state = SessionState::whole(s, stream).map_err(|e| fail(p, e))?;
                    return Ok(Self::from_state(state, path, load));
                }
                Err(e) => whole_refused = Some(e),
            }
        }
        let capture = if gpu && load.cuda_graphs != CudaGraphs::Off { Ok(()) } else { Err("not asked".into()) };
        let mut state = capture_or_not(path, load, capture, !gpu && load.release_memory)?;
        state.whole_refused = whole_refused;
        Ok(Self::from_state(state, path, load))
    }

    fn from_state(state: SessionState, path: &Path, load: &OrtLoad) -> Self {
        let inputs = state.session.inputs().iter().map(|i| i.name().to_string()).collect();
        let outputs = state.session.outputs().iter().map(|o| o.name().to_string()).collect();
        let provider = load.device.name();
        Self { state: Mutex::new(state), outputs, inputs, provider, path: path.to_path_buf(), load: load.clone() }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, SessionState>, RtError> {
        self.state.lock().map_err(|_| fail(self.provider, "session lock poisoned"))
    }

    /// The index of the loop buffers for `key` (the first `fixed` entries fixed inputs, then the
    /// state), made on first use.
    fn loop_buffers(&self, st: &mut SessionState, key: Vec<(TensorElementType, Vec<i64>)>, fixed: usize) -> Result<usize, ort::Error> {
        if let Some(i) = st.loops.iter().position(|l| l.key == key) {
            return Ok(i);
        }
        let captured = st.loops.iter().filter(|l| l.captured).count();
        let capture = st.captures() && captured < MAX_CAPTURED_LOOPS;
        if !capture
            && st.loops.len() - captured >= MAX_UNCAPTURED_LOOPS
            && let Some(oldest) = st.loops.iter().position(|l| !l.captured)
        {
            st.loops.remove(oldest);
        }
        let alloc = self.load.allocator(&st.session)?;
        let make = |keys: &[(TensorElementType, Vec<i64>)]| -> Result<Vec<DynTensor>, ort::Error> {
            keys.iter().map(|(ty, shape)| DynTensor::new(&alloc, *ty, shape.clone())).collect()
        };
        let fixed_bufs = make(&key[..fixed])?;
        let mut a = make(&key[fixed..])?;
        // Not on TensorRT: its engines take inputs and outputs as separate bindings, and aliasing
        // them is not something it promises to honour.
        let aliasable = !matches!(self.load.device, OrtDevice::TensorRt { .. });
        let mut b = key[fixed..]
            .iter()
            .enumerate()
            .map(|(k, (ty, shape))| {
                let shared = aliasable && self.outputs.get(k).is_some_and(|o| in_place(&self.inputs[fixed + k], o));
                if shared { Ok(None) } else { DynTensor::new(&alloc, *ty, shape.clone()).map(Some) }
            })
            .collect::<Result<Vec<_>, ort::Error>>()?;
        let names = (self.inputs.as_slice(), self.outputs.as_slice());
        let ab = bind(&st.session, names, &fixed_bufs, &mut a, &mut b, true)?;
        let ba = bind(&st.session, names, &fixed_bufs, &mut a, &mut b, false)?;
        // On a CUDA-graph session a loop past the captured ones runs under id -1 (no capture).
        let ids = match st.cuda_graph.is_ok() {
            true if capture => {
                st.next_graph_id += 2;
                Some((st.next_graph_id - 2, st.next_graph_id - 1))
            }
            true => Some((-1, -1)),
            false => None,
        };
        let options = [run_options(ids.map(|i| i.0), true)?, run_options(ids.map(|i| i.1), true)?];
        let zeros = (0..key.len() - fixed).map(|_| None).collect();
        st.loops.push(LoopBuffers {
            key,
            fixed: fixed_bufs,
            a,
            b,
            zeros,
            bindings: [ab, ba],
            options,
            captured: capture,
            recorded: Vec::new(),
        });
        Ok(st.loops.len() - 1)
    }

    /// The loop on the device: inputs copied into the loop's buffers, `steps` runs alternating
    /// between the two bindings without waiting for the device (or, on a whole-loop session,
    /// the loop's recorded graph launched), then the first `keep` values of the final state
    /// downloaded. A whole-loop session records a loop after its first run (which sized the
    /// arena and made the libraries' handles); why recording failed is returned beside the values.
    fn device_loop(
        &self,
        st: &mut SessionState,
        fixed: &[&DynValue],
        state: &[LoopInit<DynValue>],
        steps: usize,
        keep: usize,
    ) -> Result<(Vec<HostTensor>, Option<String>), ort::Error> {
        let mut key = fixed.iter().map(|v| value_key(v)).collect::<Result<Vec<_>, _>>()?;
        for s in state {
            key.push(match s {
                LoopInit::Value(v) => value_key(v)?,
                LoopInit::Host(t) => host_key(t),
                LoopInit::Zeros(dtype, shape) => (element_type(dtype)?, shape.iter().map(|&d| d as i64).collect()),
            });
        }
        let i = self.loop_buffers(st, key, fixed.len())?;
        let SessionState { session, loops, whole, .. } = st;
        let lp = &mut loops[i];
        for (v, buf) in fixed.iter().zip(lp.fixed.iter_mut()) {
            copy_to(v, buf)?;
        }
        for (k, (s, buf)) in state.iter().zip(lp.a.iter_mut()).enumerate() {
            match s {
                LoopInit::Value(v) => copy_to(v, buf)?,
                // Zeros (an empty KV cache) are copied on the device from zeros made once per
                // loop shape.
                LoopInit::Zeros(dtype, shape) => {
                    if lp.zeros[k].is_none() {
                        let alloc = self.load.allocator(session)?;
                        let t = HostTensor::zeros(dtype, shape.clone()).map_err(|e| ort::Error::new(e.to_string()))?;
                        let (ty, dims) = host_key(&t);
                        let mut z = DynTensor::new(&alloc, ty, dims)?;
                        copy_to(&host_value(&t)?, &mut z)?;
                        lp.zeros[k] = Some(z);
                    }
                    if let Some(z) = &lp.zeros[k] {
                        z.copy_into(&mut *buf)?;
                    }
                }
                LoopInit::Host(t) => copy_to(&host_value(t)?, buf)?,
            }
        }
        let replay = match (lp.recorded.iter().find(|(n, _)| *n == steps), whole.as_ref()) {
            (Some((_, graph)), Some(stream)) => Some((graph, stream)),
            _ => None,
        };
        let replayed = replay.is_some();
        let (bindings, options) = (&lp.bindings, &lp.options);
        // The loop's runs, alternating between the bindings, without waiting for the device.
        let mut runs = || -> Result<(), ort::Error> {
            for step in 0..steps {
                session.run_binding_with_options(&bindings[step % 2], &options[step % 2])?;
            }
            Ok(())
        };
        match replay {
            Some((graph, stream)) => graph.launch().and_then(|()| stream.synchronize()).map_err(ort::Error::new)?,
            None => {
                runs()?;
                match whole.as_ref() {
                    Some(stream) => stream.synchronize().map_err(ort::Error::new)?,
                    // The final state is in B after an odd number of runs.
                    None => bindings[(steps + 1) % 2].synchronize_outputs()?,
                }
            }
        }
        let out = (0..keep)
            .map(|k| match &lp.b[k] {
                Some(bk) if steps % 2 == 1 => download_tensor(bk),
                _ => download_tensor(&lp.a[k]),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut refused = None;
        if let Some(stream) = whole.as_ref()
            && lp.captured
            && !replayed
        {
            match stream.record(&mut || runs().map_err(|e| e.to_string())) {
                Ok(graph) => {
                    if lp.recorded.len() >= MAX_RECORDED_STEPS {
                        lp.recorded.remove(0);
                    }
                    lp.recorded.push((steps, graph));
                }
                Err(why) => refused = Some(why),
            }
        }
        Ok((out, refused))
    }

    /// The session made again with ONNX Runtime's per-run CUDA graphs (`capture` Ok) or without
    /// any (the reason it holds), the reason whole loops are not recorded kept.
    fn reload(&self, capture: Result<(), String>, whole_refused: Option<String>) -> Result<SessionState, RtError> {
        let mut st = capture_or_not(&self.path, &self.load, capture, false)?;
        st.whole_refused = whole_refused;
        Ok(st)
    }
}

/// A tensor (host or device) as host data; float16 widened to float32.
fn download_tensor(t: &DynTensor) -> Result<HostTensor, ort::Error> {
    let host;
    let t = if t.memory_info().is_cpu_accessible() {
        t
    } else {
        host = t.to(AllocationDevice::CPU, 0)?;
        &host
    };
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
    Ok(match *t.data_type() {
        TensorElementType::Float16 => {
            let (_, d) = t.try_extract_tensor::<half::f16>()?;
            HostTensor::F32(shape, d.iter().map(|v| v.to_f32()).collect())
        }
        TensorElementType::Int64 => HostTensor::I64(shape, t.try_extract_tensor::<i64>()?.1.to_vec()),
        _ => HostTensor::F32(shape, t.try_extract_tensor::<f32>()?.1.to_vec()),
    })
}

impl Engine for OrtGraph {
    type Value = DynValue;

    fn upload(&self, t: &HostTensor) -> Result<DynValue, RtError> {
        host_value(t).map_err(|e| fail(self.provider, e))
    }

    fn download(&self, v: &DynValue) -> Result<HostTensor, RtError> {
        let t = v.view().downcast::<DynTensorValueType>().map_err(|e| fail(self.provider, e))?;
        download_tensor(&t).map_err(|e| fail(self.provider, e))
    }

    fn run_values(&self, inputs: Vec<&DynValue>) -> Result<Vec<DynValue>, RtError> {
        let mut st = self.lock()?;
        if !self.load.bound() {
            let feeds: Vec<(&str, &DynValue)> = self.inputs.iter().map(String::as_str).zip(inputs).collect();
            let SessionState { session, plain, .. } = &mut *st;
            // The caller's thread computes its share of the run: subnormals flushed there too.
            let _flush = super::denormals::FlushToZero::new();
            let mut out = session.run_with_options(feeds, plain).map_err(|e| fail(self.provider, e))?;
            return self
                .outputs
                .iter()
                .map(|name| out.remove(name.as_str()).ok_or_else(|| fail(self.provider, format!("no output {name}"))))
                .collect();
        }
        // On a GPU: host inputs are copied to the device as they are bound, outputs stay there.
        let run = |st: &mut SessionState| -> Result<Vec<DynValue>, ort::Error> {
            let mut binding = st.session.create_binding()?;
            for (name, v) in self.inputs.iter().zip(&inputs) {
                binding.bind_input(name, *v)?;
            }
            let memory = self.load.memory()?;
            for name in &self.outputs {
                binding.bind_output_to_device(name, &memory)?;
            }
            let SessionState { session, plain, .. } = st;
            let mut out = session.run_binding_with_options(&binding, plain)?;
            self.outputs.iter().map(|name| out.remove(name.as_str()).ok_or_else(|| ort::Error::new(format!("no output {name}")))).collect()
        };
        run(&mut st).map_err(|e| fail(self.provider, e))
    }

    fn run_loop(&self, fixed: &[&DynValue], state: Vec<LoopInit<DynValue>>, steps: usize, keep: usize) -> Result<Vec<HostTensor>, RtError> {
        if !self.load.bound() {
            return super::feed_loop(self, fixed, state, steps, keep);
        }
        let mut st = self.lock()?;
        match self.device_loop(&mut st, fixed, &state, steps, keep) {
            Ok((out, None)) => Ok(out),
            Ok((out, Some(why))) => {
                // Recording the loop failed (its values came from the runs before): the session
                // again, ONNX Runtime capturing each run instead.
                *st = self.reload(Ok(()), Some(format!("refused at recording: {why}")))?;
                Ok(out)
            }
            Err(e) if st.whole.is_some() => {
                let why = Some(format!("refused at a run or replay: {e}"));
                *st = self.reload(Ok(()), why)?;
                self.device_loop(&mut st, fixed, &state, steps, keep).map(|(out, _)| out).map_err(|e| fail(self.provider, e))
            }
            Err(e) if st.cuda_graph.is_ok() => {
                // The capture failed at run time: the session again without CUDA graphs.
                let whole_refused = st.whole_refused.take();
                *st = self.reload(Err(format!("refused at capture: {e}")), whole_refused)?;
                self.device_loop(&mut st, fixed, &state, steps, keep).map(|(out, _)| out).map_err(|e| fail(self.provider, e))
            }
            Err(e) => Err(fail(self.provider, e)),
        }
    }

    fn loop_mode(&self) -> Option<String> {
        if !self.load.bound() {
            return None;
        }
        let st = self.state.lock().ok()?;
        let all_captured = st.loops.iter().filter(|l| l.captured).count() >= MAX_CAPTURED_LOOPS;
        let graphs = match (&st.whole, &st.cuda_graph) {
            (Some(_), _) => Ok("each loop one CUDA graph"),
            (None, Ok(())) => Ok("CUDA graphs"),
            (None, Err(why)) => Err(why),
        };
        let mode = match graphs {
            Ok(what) if all_captured => {
                format!("device buffers, {what} for the first {MAX_CAPTURED_LOOPS} loop shapes, later shapes without")
            }
            Ok(what) => format!("device buffers, {what}"),
            Err(why) => format!("device buffers, no CUDA graphs ({why})"),
        };
        Some(match &st.whole_refused {
            Some(why) => format!("{mode}; whole loops not recorded: {why}"),
            None => mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use itarflow_base::manifest::TensorSpec;
    use serde_json::json;

    #[test]
    fn profiles_cover_the_batch_and_past_length_and_skip_static_inputs() {
        let spec = |name: &str, shape: Vec<serde_json::Value>| TensorSpec { name: name.into(), dtype: "float32".into(), shape };
        let inputs = [
            spec("token", vec![json!("N"), json!(16)]),
            spec("pos", vec![]),
            spec("past_k0", vec![json!("N"), json!(2), json!("P"), json!(64)]),
        ];
        let p = trt_profiles(&inputs, 49, 32).unwrap();
        assert_eq!(p.min, "token:1x16,past_k0:1x2x0x64");
        assert_eq!(p.opt, "token:32x16,past_k0:32x2x24x64");
        assert_eq!(p.max, "token:32x16,past_k0:32x2x48x64");
        assert_eq!(trt_profiles(&inputs[1..2], 49, 32), None);
        let levels = [spec("levels", vec![json!("N"), json!("K")]), spec("x", vec![json!("N"), json!(1), json!(28), json!(28)])];
        let p = trt_profiles(&levels, 1, 256).unwrap();
        assert_eq!(p.min, "levels:1x2,x:1x1x28x28");
        assert_eq!(p.opt, "levels:256x11,x:256x1x28x28");
        assert_eq!(p.max, "levels:256x1001,x:256x1x28x28");
    }
}

//! A session of one graph on the provider a load asks for, the run options of its runs, and its
//! state: whether it captures CUDA graphs, and the loops it has run.

use std::path::{Path, PathBuf};

use ort::session::{RunOptions, Session};

use super::loops::LoopBuffers;
use super::{OrtDevice, OrtLoad, cpu, cuda, environment, fail, tensorrt};
use crate::RtError;
use crate::provider::cuda_loop::LoopStream;

/// A session for `path`: ONNX Runtime's per-run CUDA graphs if `cuda_graph`, its kernels on
/// `stream` if given (whole-loop recording; CUDA only).
pub(super) fn session(path: &Path, load: &OrtLoad, cuda_graph: bool, stream: Option<&LoopStream>) -> Result<Session, RtError> {
    let p = load.device.name();
    // The library's failure is this provider's: name the provider the caller asked for.
    let env = environment(load.library.as_deref()).map_err(|e| match e {
        RtError::Provider { reason, .. } => fail(p, reason),
        other => other,
    })?;
    let ep = match &load.device {
        OrtDevice::Cpu => cpu::execution_provider(),
        OrtDevice::Cuda { tf32 } => cuda::execution_provider(*tf32, cuda_graph, stream),
        OrtDevice::TensorRt { fp16, cache_dir, profiles } => tensorrt::execution_provider(*fp16, cache_dir, profiles.as_ref(), cuda_graph),
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
        builder = cpu::configure(builder)?;
    }
    if let Some(prefix) = profile_prefix(path) {
        builder = builder.with_profiling(prefix).map_err(|e| fail(p, e))?;
    }
    // ONNX Runtime sets the flush-to-zero mode on the thread creating its first session for good;
    // the caller's mode is put back (runs set it for their duration, `denormals`).
    let _keep = crate::provider::denormals::KeepMode::new();
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
pub(super) fn run_options(graph_id: Option<i64>, async_run: bool) -> Result<RunOptions, ort::Error> {
    let mut o = RunOptions::new()?;
    if let Some(id) = graph_id {
        o.set("gpu_graph_id", id.to_string())?;
    }
    if async_run {
        o.disable_device_sync()?;
    }
    Ok(o)
}

/// A session, whether it captures CUDA graphs, and the loops it has run (their buffers are kept
/// for later loops of the same shapes, so that captured graphs replay on the same addresses).
pub(super) struct SessionState {
    pub(super) session: Session,
    /// Ok when ONNX Runtime captures and replays each loop run as a CUDA graph; else why not.
    pub(super) cuda_graph: Result<(), String>,
    /// The session's own stream, on a session that records whole loops (`--cuda-graphs loop`);
    /// declared after the session, so that the session (which runs on it) goes first.
    pub(super) whole: Option<LoopStream>,
    /// Why a session asked to record whole loops does not (it captures runs instead).
    pub(super) whole_refused: Option<String>,
    /// Options of runs outside loops (annotation -1, no capture, on a CUDA-graph session).
    pub(super) plain: RunOptions,
    pub(super) loops: Vec<LoopBuffers>,
    pub(super) next_graph_id: i64,
}

impl SessionState {
    pub(super) fn new(session: Session, cuda_graph: Result<(), String>, release_memory: bool) -> Result<Self, ort::Error> {
        let mut plain = run_options(cuda_graph.is_ok().then_some(-1), false)?;
        if release_memory {
            plain.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
        }
        Ok(Self { session, cuda_graph, whole: None, whole_refused: None, plain, loops: Vec::new(), next_graph_id: 1 })
    }

    /// A session whose loops are recorded whole on `stream`.
    pub(super) fn whole(session: Session, stream: LoopStream) -> Result<Self, ort::Error> {
        let mut st = Self::new(session, Err("whole loops recorded instead".into()), false)?;
        st.whole = Some(stream);
        Ok(st)
    }

    /// Whether loops of new shapes are captured or recorded (up to [`MAX_CAPTURED_LOOPS`]).
    pub(super) fn captures(&self) -> bool {
        self.cuda_graph.is_ok() || self.whole.is_some()
    }
}

/// A session's state with ONNX Runtime's per-run CUDA graphs if `capture` is Ok (without, and
/// saying why, where ONNX Runtime refuses them at load), or without any for the reason it holds.
pub(super) fn capture_or_not(
    path: &Path,
    load: &OrtLoad,
    capture: Result<(), String>,
    release_memory: bool,
) -> Result<SessionState, RtError> {
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

//! A graph in an ONNX Runtime session, and its runs: host values fed directly on a CPU, bound
//! through IoBinding with outputs left on the device on a GPU.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::memory::AllocationDevice;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType};

use super::loops::MAX_CAPTURED_LOOPS;
use super::session::{SessionState, capture_or_not, session};
use super::{OrtDevice, OrtLoad, fail};
use crate::RtError;
use crate::provider::cuda_loop::LoopStream;
use crate::provider::{CudaGraphs, Engine, HostTensor, LoopInit};

/// A graph in an ONNX Runtime session. On a GPU, inputs and outputs are bound through
/// IoBinding and outputs stay in device memory, feeding later runs without a copy; only
/// `download` brings values to the host.
pub struct OrtGraph {
    pub(super) state: Mutex<SessionState>,
    pub(super) outputs: Vec<String>,
    pub(super) inputs: Vec<String>,
    pub(super) provider: &'static str,
    pub(super) path: PathBuf,
    pub(super) load: OrtLoad,
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

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, SessionState>, RtError> {
        self.state.lock().map_err(|_| fail(self.provider, "session lock poisoned"))
    }
}

pub(super) fn host_value(t: &HostTensor) -> Result<DynValue, ort::Error> {
    match t {
        HostTensor::F32(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
        HostTensor::F16(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
        HostTensor::I64(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
    }
}

/// A tensor (host or device) as host data; float16 widened to float32.
pub(super) fn download_tensor(t: &DynTensor) -> Result<HostTensor, ort::Error> {
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
            let _flush = crate::provider::denormals::FlushToZero::new();
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
            return crate::provider::feed_loop(self, fixed, state, steps, keep);
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

//! Loops on the device: a loop's buffers (its fixed inputs and two sets of state, KV caches
//! written in place), the two IoBindings that alternate between them, and the loop's runs,
//! captured by ONNX Runtime as CUDA graphs or recorded whole on the session's stream.

use ort::session::{IoBinding, RunOptions, Session};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

use super::OrtDevice;
use super::graph::{OrtGraph, download_tensor, host_value};
use super::session::{SessionState, capture_or_not, run_options};
use crate::RtError;
use crate::provider::cuda_loop::LoopGraph;
use crate::provider::{HostTensor, LoopInit};

/// A loop's device buffers: the fixed inputs, two sets of state (a run reads one set and writes
/// the other), device zeros for state started from zeros, and the two bindings (A -> B,
/// B -> A), each with the run options that select its own captured CUDA graph.
///
/// State updated in place (the KV caches: an input `past_*` whose output `present_*` is the
/// input with one slot written) has one buffer, bound as both the input and the output of both
/// bindings: ONNX Runtime's ScatterElements copies its data input to its output only when they
/// are different buffers, so a step writes its token's keys and values and nothing else (CUDA
/// and CPU; TensorRT keeps two buffers).
pub(super) struct LoopBuffers {
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
    pub(super) captured: bool,
    /// The loop recorded as one graph per number of steps, oldest first (whole-loop sessions;
    /// at most [`MAX_RECORDED_STEPS`]: a server's denoising requests choose their steps).
    recorded: Vec<(usize, LoopGraph)>,
}

/// Loop shapes a CUDA-graph session captures, at most. ONNX Runtime keeps a captured graph for
/// as long as the session lives (graph ids cannot be captured again), so the loops of captured
/// graphs are never dropped, and shapes past these run without capture: a server merging
/// requests into batches of every size would otherwise capture (and hold) a graph per size.
pub(super) const MAX_CAPTURED_LOOPS: usize = 8;
/// Loop shapes without capture whose buffers a session keeps (the oldest dropped first).
const MAX_UNCAPTURED_LOOPS: usize = 4;
/// Step counts a whole-loop session keeps a recorded graph of, per loop shape (the oldest
/// dropped first).
const MAX_RECORDED_STEPS: usize = 4;

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

impl OrtGraph {
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
    pub(super) fn device_loop(
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
    pub(super) fn reload(&self, capture: Result<(), String>, whole_refused: Option<String>) -> Result<SessionState, RtError> {
        let mut st = capture_or_not(&self.path, &self.load, capture, false)?;
        st.whole_refused = whole_refused;
        Ok(st)
    }
}

//! The tract provider: pure-Rust CPU inference. Each graph is loaded once, decluttered and
//! optimised with its batch (and past-length) dims left symbolic, and run with a reusable state.
//! Values stay tract tensors between steps, so a step's present K/V feed the next step as they are.
//! Run states (tract's per-run scratch) are pooled and reused across runs: a generation's T - 1
//! steps share one state instead of allocating one per step.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use super::{Engine, HostTensor};
use crate::RtError;

/// A graph ready to run on tract.
pub struct TractGraph {
    plan: Arc<TypedRunnableModel>,
    name: String,
    /// Idle run states (one per concurrent caller at most).
    states: Mutex<Vec<TypedSimpleState>>,
}

fn fail(what: &str, e: impl std::fmt::Debug) -> RtError {
    RtError::Provider { provider: "tract".into(), reason: format!("{what}: {e:?}") }
}

impl TractGraph {
    /// Loads and optimises the ONNX graph at `path` (external data is read beside it).
    pub fn load(path: &Path) -> Result<Self, RtError> {
        let name = path.display().to_string();
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| fail(&format!("loading {name}"), e))?;
        let plan = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| fail(&format!("optimising {name}"), e))?;
        Ok(Self { plan, name, states: Mutex::new(Vec::new()) })
    }

    /// Runs on host tensors (for checks and one-off calls).
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RtError> {
        let ins = inputs.iter().map(|t| self.upload(t)).collect::<Result<Vec<_>, _>>()?;
        let outs = self.run_values(ins.iter().collect())?;
        outs.iter().map(download).collect()
    }

    fn upload(&self, t: &HostTensor) -> Result<TValue, RtError> {
        let tensor = match t {
            HostTensor::F32(s, d) => Tensor::from_shape(s, d),
            HostTensor::I64(s, d) => Tensor::from_shape(s, d),
        };
        tensor.map(|t| t.into_tvalue()).map_err(|e| fail("input", e))
    }
}

fn download(v: &TValue) -> Result<HostTensor, RtError> {
    let t = v.cast_to::<f32>().map_err(|e| fail("output", e))?;
    let view = t.to_plain_array_view::<f32>().map_err(|e| fail("output", e))?;
    Ok(HostTensor::F32(view.shape().to_vec(), view.iter().copied().collect()))
}

impl Engine for TractGraph {
    type Value = TValue;

    fn upload(&self, t: &HostTensor) -> Result<TValue, RtError> {
        TractGraph::upload(self, t)
    }

    fn download(&self, v: &TValue) -> Result<HostTensor, RtError> {
        download(v)
    }

    fn run_values(&self, inputs: Vec<&TValue>) -> Result<Vec<TValue>, RtError> {
        let pooled = self.states.lock().map_err(|_| fail(&self.name, "state pool lock poisoned"))?.pop();
        let mut state = match pooled {
            Some(s) => s,
            None => self.plan.spawn().map_err(|e| fail(&format!("preparing {}", self.name), e))?,
        };
        // TValues share their data: these clones copy no tensor.
        let outs = state.run(inputs.into_iter().cloned().collect()).map_err(|e| fail(&format!("running {}", self.name), e))?;
        if let Ok(mut pool) = self.states.lock() {
            pool.push(state);
        }
        Ok(outs.into_iter().collect())
    }
}

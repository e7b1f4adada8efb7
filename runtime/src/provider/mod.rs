//! Execution providers, one file each. A provider loads a graph and runs it on its own value
//! type, so that outputs (e.g. a step's present K/V) can feed the next run without a copy
//! through host memory.

pub mod ort;
pub mod tract;

use crate::RtError;

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
pub trait Engine {
    type Value;
    fn upload(&self, t: &HostTensor) -> Result<Self::Value, RtError>;
    fn download(&self, v: &Self::Value) -> Result<HostTensor, RtError>;
    /// Runs the graph on inputs in the graph's input order; outputs in its output order.
    fn run_values(&self, inputs: Vec<&Self::Value>) -> Result<Vec<Self::Value>, RtError>;
}

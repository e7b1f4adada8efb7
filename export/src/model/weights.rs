//! The model's weights by their reference names, with shape checks.

use std::collections::BTreeMap;

use itarflow_base::{ModelConfig, RawTensor};

use crate::ExportError;
use crate::ir::{Graph, V};

pub struct Weights<'a> {
    pub config: &'a ModelConfig,
    tensors: &'a BTreeMap<String, RawTensor>,
}

impl<'a> Weights<'a> {
    pub fn new(config: &'a ModelConfig, tensors: &'a BTreeMap<String, RawTensor>) -> Self {
        Self { config, tensors }
    }

    /// The data of tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&'a [f32], ExportError> {
        let t = self.tensors.get(name).ok_or_else(|| ExportError::Weights(format!("missing tensor '{name}' (expected {shape:?})")))?;
        if t.shape != shape {
            return Err(ExportError::Weights(format!("tensor '{name}' has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(&t.data)
    }

    /// A Linear layer `name` (reference layout: weight (out, in)) as graph constants
    /// `name.weight` (in, out) and `name.bias` (out).
    pub fn linear(&self, g: &mut Graph, name: &str, graph_name: &str, d_in: usize, d_out: usize) -> Result<(V, V), ExportError> {
        let w = self.get(&format!("{name}.weight"), &[d_out, d_in])?;
        let mut wt = vec![0f32; d_in * d_out];
        for o in 0..d_out {
            for i in 0..d_in {
                wt[i * d_out + o] = w[o * d_in + i];
            }
        }
        let b = self.get(&format!("{name}.bias"), &[d_out])?.to_vec();
        let wv = g.weight(&format!("{graph_name}.weight"), &[d_in, d_out], wt);
        let bv = g.weight(&format!("{graph_name}.bias"), &[d_out], b);
        Ok((wv, bv))
    }

    /// A LayerNorm `name` as constants (scale, bias).
    pub fn norm(&self, g: &mut Graph, name: &str, graph_name: &str, width: usize) -> Result<(V, V), ExportError> {
        let w = self.get(&format!("{name}.weight"), &[width])?.to_vec();
        let b = self.get(&format!("{name}.bias"), &[width])?.to_vec();
        Ok((g.weight(&format!("{graph_name}.scale"), &[width], w), g.weight(&format!("{graph_name}.bias"), &[width], b)))
    }
}

//! Running exported graphs with tract: the checks of `--check` and the tests load every graph
//! this way (tract is stricter than ONNX Runtime about what it accepts).

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::ExportError;

/// An input value for a graph.
#[derive(Debug, Clone)]
pub enum Feed {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

/// An output: shape and f32 data.
pub type Output = (Vec<usize>, Vec<f32>);

/// A graph loaded and optimised by tract, with symbolic batch (and past length) kept symbolic.
pub struct TractGraph {
    plan: Arc<TypedRunnableModel>,
}

fn err(path: &Path, e: impl std::fmt::Display) -> ExportError {
    ExportError::Check(format!("tract on {}: {e}", path.display()))
}

impl TractGraph {
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| err(path, format!("{e:?}")))?;
        let plan = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(path, format!("{e:?}")))?;
        Ok(Self { plan })
    }

    pub fn run(&self, feeds: &[Feed]) -> Result<Vec<Output>, ExportError> {
        let inputs: TVec<TValue> = feeds
            .iter()
            .map(|f| match f {
                Feed::F32(s, d) => Tensor::from_shape(s, d),
                Feed::I64(s, d) => Tensor::from_shape(s, d),
            })
            .map(|t| t.map(|t| t.into_tvalue()))
            .collect::<TractResult<_>>()
            .map_err(|e| ExportError::Check(format!("tract input: {e:?}")))?;
        let outputs = self.plan.run(inputs).map_err(|e| ExportError::Check(format!("tract run: {e:?}")))?;
        outputs
            .iter()
            .map(|o| {
                let o = o.cast_to::<f32>().map_err(|e| ExportError::Check(format!("tract output: {e:?}")))?;
                let view = o.to_plain_array_view::<f32>().map_err(|e| ExportError::Check(format!("{e:?}")))?;
                Ok((view.shape().to_vec(), view.iter().copied().collect()))
            })
            .collect()
    }
}

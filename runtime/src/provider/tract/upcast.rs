//! fp16 graphs on CPUs without fp16 arithmetic: computed in fp32, their fp16 inputs and outputs
//! kept. Where the CPU has no fp16 arithmetic (x86, and aarch64 without FP16), tract converts
//! every fp16 value on its way into and out of each kernel: the demo's score of 8 images took
//! 2.1 s in fp16 against 14 ms in fp32 on a 2-core x86 VM. There a plan of an fp16 graph is
//! made from the graph translated to fp32 (weights widened once at load, every op computing in
//! fp32); the run casts its fp16 inputs up and the graph's fp16 outputs back down, so callers see
//! the graph's own types and outputs rounded to fp16 as the graph would round them. The results
//! differ from fp16 arithmetic only by the rounding fp16 would add inside the graph.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::transform::ModelTransform;

use super::native_f16;

/// How a plan computes an fp16 graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F16Compute {
    /// In fp16, as the graph says (tract's fp16 kernels: hardware on aarch64 with FP16,
    /// software conversions elsewhere).
    Native,
    /// In fp32, fp16 only at the graph's inputs and outputs.
    Fp32,
}

impl F16Compute {
    pub fn name(self) -> &'static str {
        match self {
            F16Compute::Native => "native",
            F16Compute::Fp32 => "fp32",
        }
    }

    /// This CPU's: [`F16Compute::Native`] where it has fp16 arithmetic, else [`F16Compute::Fp32`].
    pub fn for_this_cpu() -> Self {
        if native_f16() { F16Compute::Native } else { F16Compute::Fp32 }
    }
}

/// Whether `model` computes in fp16: an fp16 input or constant.
fn has_f16(model: &TypedModel) -> TractResult<bool> {
    for i in 0..model.inputs.len() {
        if model.input_fact(i)?.datum_type == f16::datum_type() {
            return Ok(true);
        }
    }
    Ok(model.nodes.iter().any(|n| n.op_as::<Const>().is_some_and(|c| c.val().datum_type() == f16::datum_type())))
}

/// `model` translated to compute in fp32 where it computes in fp16, with which of its outputs
/// were fp16 (to be cast back after each run); `None` for a graph with nothing in fp16.
pub fn to_fp32(mut model: TypedModel) -> TractResult<(TypedModel, Option<Vec<bool>>)> {
    if !has_f16(&model)? {
        return Ok((model, None));
    }
    let f16_outputs = (0..model.outputs.len())
        .map(|i| model.output_fact(i).map(|f| f.datum_type == f16::datum_type()))
        .collect::<TractResult<Vec<_>>>()?;
    FloatPrecisionTranslator::new(f16::datum_type(), f32::datum_type()).transform(&mut model)?;
    Ok((model, Some(f16_outputs)))
}

/// A run's inputs for a translated plan: fp16 values as fp32.
pub fn inputs_up(inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
    inputs
        .into_iter()
        .map(|v| if v.datum_type() == f16::datum_type() { Ok(v.cast_to::<f32>()?.into_owned().into_tvalue()) } else { Ok(v) })
        .collect()
}

/// A translated plan's outputs as the graph types them: those in `f16_outputs` back to fp16.
pub fn outputs_down(outputs: TVec<TValue>, f16_outputs: &[bool]) -> TractResult<TVec<TValue>> {
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if f16_outputs.get(i).copied().unwrap_or(false) && v.datum_type() == f32::datum_type() {
                Ok(v.cast_to::<f16>()?.into_owned().into_tvalue())
            } else {
                Ok(v)
            }
        })
        .collect()
}

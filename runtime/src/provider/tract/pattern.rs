//! Reading a decluttered tract model's nodes for the load-time rewrites: which op makes a
//! value, from which inputs, which values are constants, and who else reads a value.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// The single node reading `outlet`, if exactly one node does and it is not a model output.
pub(super) fn only_reader(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    match model.outlet_successors(outlet) {
        [one] if !model.outputs.contains(&outlet) => Some(one.node),
        _ => None,
    }
}

/// Whether every reader of `outlet` is one of `nodes` (and it is not a model output): a value
/// a fused op may keep to itself.
pub(super) fn read_only_by(model: &TypedModel, outlet: OutletId, nodes: &[usize]) -> bool {
    !model.outputs.contains(&outlet) && model.outlet_successors(outlet).iter().all(|s| nodes.contains(&s.node))
}

/// The operands of `outlet` if a plain binary `B` (not quantised) computes it.
pub(super) fn binary<B: BinMiniOp>(model: &TypedModel, outlet: OutletId) -> Option<(OutletId, OutletId)> {
    let node = model.node(outlet.node);
    let bin = node.op_as::<TypedBinOp>()?;
    (bin.0.is::<B>() && bin.1.is_none() && node.inputs.len() == 2).then(|| (node.inputs[0], node.inputs[1]))
}

/// The operands of a commutative `B` computing `outlet` with `first` the one `is_first` accepts
/// (either order): (first, other).
pub(super) fn binary_with<B: BinMiniOp>(
    model: &TypedModel,
    outlet: OutletId,
    is_first: impl Fn(OutletId) -> bool,
) -> Option<(OutletId, OutletId)> {
    let (a, b) = binary::<B>(model, outlet)?;
    if is_first(a) {
        Some((a, b))
    } else if is_first(b) {
        Some((b, a))
    } else {
        None
    }
}

/// The input of `outlet` if a plain element-wise `U` computes it.
pub(super) fn unary<U: ElementWiseMiniOp>(model: &TypedModel, outlet: OutletId) -> Option<OutletId> {
    let node = model.node(outlet.node);
    let ew = node.op_as::<ElementWiseOp>()?;
    (ew.0.is::<U>() && ew.1.is_none() && node.inputs.len() == 1).then(|| node.inputs[0])
}

/// The input of `outlet` if it is the `reducer` of that input over its last axis alone.
pub(super) fn reduced_last(model: &TypedModel, outlet: OutletId, reducer: Reducer) -> Option<OutletId> {
    let node = model.node(outlet.node);
    let red = node.op_as::<Reduce>()?;
    let rank = model.outlet_fact(*node.inputs.first()?).ok()?.rank();
    (red.reducer == reducer && red.axes.as_slice() == [rank.checked_sub(1)?]).then(|| node.inputs[0])
}

/// The constant of `outlet` if it is a constant of f32 values.
pub(super) fn constant(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    let konst = model.outlet_fact(outlet).ok()?.konst.clone()?;
    (konst.datum_type() == f32::datum_type()).then_some(konst)
}

/// The value of `outlet` if it is a constant holding one f32 (of any rank).
pub(super) fn scalar(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let konst = constant(model, outlet)?;
    (konst.len() == 1).then(|| konst.to_plain_array_view::<f32>().ok()?.iter().next().copied()).flatten()
}

/// A constant of `len` f32 values over the last axis (its other axes of size 1), as a vector.
pub(super) fn row_constant(model: &TypedModel, outlet: OutletId, len: usize) -> Option<Vec<f32>> {
    let konst = constant(model, outlet)?;
    let shape = konst.shape();
    let row = shape.last() == Some(&len) && shape[..shape.len() - 1].iter().all(|&d| d == 1);
    row.then(|| konst.to_plain_array_view::<f32>().ok().map(|v| v.iter().copied().collect())).flatten()
}

/// The mean of `x` over its last axis as tract declutters ReduceMean: `sum * c`, `sum` =
/// `Reduce<Sum>(x)` read by nothing else, the constant c = 1/L for the axis's known length L.
pub(super) struct MeanLast {
    pub x: OutletId,
    pub sum: OutletId,
    /// 1/L as the graph holds it (to be applied as it is).
    pub c: f32,
}

/// The mean whose product is `outlet`, if it is one (see [`MeanLast`]).
pub(super) fn mean_last(model: &TypedModel, outlet: OutletId) -> Option<MeanLast> {
    use tract_onnx::tract_core::ops::math::Mul;
    let (sum, c) = binary_with::<Mul>(model, outlet, |o| scalar(model, o).is_none())?;
    let c = scalar(model, c)?;
    let x = reduced_last(model, sum, Reducer::Sum)?;
    let len = model.outlet_fact(x).ok()?.shape.last()?.to_i64().ok()?;
    (len > 0 && (c * len as f32 - 1.0).abs() <= 1e-6 && only_reader(model, sum) == Some(outlet.node)).then_some(MeanLast { x, sum, c })
}

/// Whether `a` and `b` hold f32 values of one shape.
pub(super) fn same_f32_shape(model: &TypedModel, a: OutletId, b: OutletId) -> bool {
    match (model.outlet_fact(a), model.outlet_fact(b)) {
        (Ok(fa), Ok(fb)) => fa.datum_type == f32::datum_type() && fb.datum_type == f32::datum_type() && fa.shape == fb.shape,
        _ => false,
    }
}

/// Whether `stat` holds one f32 value per row of `x` (x's shape with its last axis 1).
pub(super) fn per_row_of(model: &TypedModel, stat: OutletId, x: OutletId) -> bool {
    let (Ok(fs), Ok(fx)) = (model.outlet_fact(stat), model.outlet_fact(x)) else { return false };
    let r = fx.rank();
    fs.datum_type == f32::datum_type() && r >= 1 && fs.rank() == r && fs.shape[r - 1].is_one() && fs.shape[..r - 1] == fx.shape[..r - 1]
}

//! tract's Softmax over a short last axis, and the additive mask before it, as one tract op,
//! rewritten in at load.
//!
//! On x86-64, tract's Softmax walks each row with per-row kernel calls (each aligning the row
//! into scratch): the demo's attention, rows of 49 scores, cost ~20 ns per element (1.3 ms for
//! 16 images x 2 heads x 49 x 49 on this machine, ONNX Runtime 0.05 ms); the causal mask's
//! broadcast Add before it takes tract's generic path (~2 ns per element). So where the softmax
//! axis is the last one and of a known length L, [`RowSoftmax`] adds the mask (a constant of the
//! scores' rank, broadcast over its axes of size 1), subtracts each row's maximum, exponentiates
//! a block of rows at a time with tract's own exp kernel (long runs, not rows of L), and
//! multiplies each row by the inverse of its sum, as tract's Softmax does. On the demo's score
//! graph of 8 images the mask's Add alone took ~0.07 ms per attention beside the previous
//! rewrite's five nodes (MaxPool, Sub, Exp, Sum, Div); the op takes ~0.05 ms for all of it.
//! Softmaxes over a symbolic length (the growing-cache step graphs, P + 1 keys) are left as they
//! are.

use std::sync::Arc;

use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::lanes;
use super::pattern::{binary_with, constant, only_reader};

/// Values exponentiated per kernel call, at most (whole rows).
const BLOCK: usize = 4096;

/// `softmax(x + mask)` over the last axis of f32 x; the mask, if any, is a constant of x's rank
/// whose axes are x's or of size 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSoftmax {
    pub mask: Option<Arc<Tensor>>,
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("mask {:?}", self.mask.as_ref().map(|m| m.shape().to_vec()))])
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "RowSoftmax takes the scores");
        let shape = inputs[0].shape().to_vec();
        let len = *shape.last().context("RowSoftmax of a scalar")?;
        ensure!(len > 0, "RowSoftmax: rows of no values, {shape:?}");
        let xv = inputs[0].try_as_plain_ram()?;
        let x = xv.as_slice::<f32>()?;
        // Where each run of the scores finds its mask values: a row's values are one run's
        // slice (the mask's last axis is the row's), or one value repeated along it.
        let runs = self.mask.as_ref().map(|m| super::broadcast::runs(&shape, m.shape()).context("RowSoftmax's mask")).transpose()?;
        let mask_view = self.mask.as_ref().map(|m| m.try_as_plain_ram()).transpose()?;
        let mask = mask_view.as_ref().map(|m| m.as_slice::<f32>()).transpose()?;
        let exp = Func::Exp.ew_f32()?;
        let out = super::filled(&shape, |out| {
            let per_block = (BLOCK / len).max(1) * len;
            for (b, (xb, ob)) in x.chunks(per_block).zip(out.chunks_mut(per_block)).enumerate() {
                for (i, (xr, or)) in xb.chunks(len).zip(ob.chunks_mut(len)).enumerate() {
                    match (&runs, mask) {
                        (Some((run, offsets)), Some(m)) => {
                            let e = b * per_block + i * len;
                            let at = offsets[e / run] + e % run;
                            if *run >= len {
                                or.iter_mut().zip(xr).zip(&m[at..at + len]).for_each(|((o, x), m)| *o = x + m);
                            } else {
                                or.iter_mut().zip(xr).for_each(|(o, x)| *o = x + m[at]);
                            }
                        }
                        _ => or.copy_from_slice(xr),
                    }
                    let max = lanes::max(or);
                    or.iter_mut().for_each(|v| *v -= max);
                }
                exp.run(ob)?;
                for or in ob.chunks_mut(len) {
                    let inv = lanes::sum(or).recip();
                    or.iter_mut().for_each(|v| *v *= inv);
                }
            }
            Ok(())
        })?;
        Ok(tvec!(out))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "RowSoftmax takes one f32 input");
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned().collect::<TVec<TDim>>())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * 8)))
    }

    as_op!();
}

/// The scores and mask of an `Add` of a constant mask that only `softmax` reads.
fn masked(model: &TypedModel, add: OutletId, softmax: usize) -> Option<(OutletId, Arc<Tensor>)> {
    if only_reader(model, add) != Some(softmax) {
        return None;
    }
    let (mask, scores) = binary_with::<Add>(model, add, |o| constant(model, o).is_some())?;
    let mask = constant(model, mask)?;
    let shape = model.outlet_fact(scores).ok()?.shape.as_concrete()?.to_vec();
    let fits = mask.rank() == shape.len() && mask.shape().iter().zip(&shape).all(|(m, s)| m == s || *m == 1);
    (fits && model.outlet_fact(add).ok()?.shape == model.outlet_fact(scores).ok()?.shape).then_some((scores, mask))
}

/// `model` with every f32 Softmax over a last axis of known length, over rows whose count is
/// known, computed by [`RowSoftmax`], with the constant mask added before it where there is one.
/// Returns how many were replaced.
pub fn rewrite_softmaxes(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(sm) = node.op_as::<Softmax>() else { continue };
        let fact = model.outlet_fact(node.inputs[0])?;
        let rank = fact.rank();
        if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || fact.datum_type != f32::datum_type() {
            continue;
        }
        if rank < 2 || sm.axes.as_slice() != [rank - 1] {
            continue;
        }
        let dims: Vec<usize> = match fact.shape.as_concrete() {
            Some(d) => d.to_vec(),
            None => continue,
        };
        if dims[rank - 1] < 2 || dims.iter().product::<usize>() == 0 {
            continue;
        }
        let (input, mask) = match masked(model, node.inputs[0], id) {
            Some((scores, mask)) => (scores, Some(mask)),
            None => (node.inputs[0], None),
        };
        let name = node.name.clone();
        super::substitute(model, OutletId::new(id, 0), &[input], |patch, taps| {
            Ok(patch.wire_node(format!("{name}.row_softmax"), RowSoftmax { mask }, taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math;

    fn softmax_model(shape: impl FnOnce(&SymbolScope) -> Vec<TDim>, axis: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let shape = shape(&model.symbols);
        let x = model.add_source("x", f32::fact(&shape)).unwrap();
        let op = Softmax { axes: tvec![axis], quant_output_dt: None, kind: SoftmaxKind::Softmax };
        let y = model.wire_node("sm", op, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn run(model: TypedModel, shape: &[usize], x: &[f32]) -> Vec<f32> {
        super::super::test_run(model, &[(shape.to_vec(), x.to_vec())])
    }

    /// Rows of 7 with a masked entry, scores past exp's f32 range and equal scores: the rewrite
    /// matches the softmax computed in f64, element by element.
    #[test]
    fn rewritten_softmax_is_the_row_softmax() {
        let shape = [3, 2, 4, 7];
        let x: Vec<f32> = (0..3 * 2 * 4 * 7)
            .map(|i| match i % 11 {
                3 => -1e9,
                5 => 95.0 + (i % 5) as f32,
                7 => 2.0,
                _ => ((i * 7919) % 1000) as f32 / 125.0 - 4.0,
            })
            .collect();
        let dims: Vec<TDim> = shape.iter().map(|&d| d.to_dim()).collect();
        let mut model = softmax_model(|_| dims, 3);
        assert_eq!(rewrite_softmaxes(&mut model).unwrap(), 1);
        assert!(model.nodes.iter().all(|n| !n.op_is::<Softmax>()), "the Softmax node is still there");
        let got = run(model, &shape, &x);
        for (r, row) in x.chunks(7).enumerate() {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (j, &v) in row.iter().enumerate() {
                let want = (v as f64 - max).exp() / sum;
                let have = got[r * 7 + j] as f64;
                assert!((have - want).abs() <= 1e-6 * want.max(1e-30) + 1e-7, "row {r} col {j}: {have} vs {want}");
            }
        }
    }

    /// The causal mask's Add before the softmax is computed in it: (scores + mask) row by row,
    /// masked entries 0, against the softmax in f64.
    #[test]
    fn the_mask_before_a_softmax_is_added_in_it() {
        let (t, heads) = (6, 3);
        let shape = [2, t, heads, t];
        let x = super::super::test_values(2 * t * heads * t, 4);
        let mask: Vec<f32> = (0..t * t).map(|i| if i % t <= i / t { 0.0 } else { f32::NEG_INFINITY }).collect();
        let mut model = TypedModel::default();
        let s = model.add_source("x", f32::fact(shape)).unwrap();
        let m = model.add_const("mask", Tensor::from_shape(&[1, t, 1, t], &mask).unwrap()).unwrap();
        let added = model.wire_node("add", TypedBinOp(Box::new(math::Add), None), &[s, m]).unwrap()[0];
        let op = Softmax { axes: tvec![3], quant_output_dt: None, kind: SoftmaxKind::Softmax };
        let y = model.wire_node("sm", op, &[added]).unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(rewrite_softmaxes(&mut model).unwrap(), 1);
        let model = model.into_decluttered().unwrap();
        assert!(model.nodes.iter().all(|n| !n.op_is::<TypedBinOp>()), "the mask's Add is still there");
        let got = run(model, &shape, &x);
        for (r, row) in x.chunks(t).enumerate() {
            let query = (r / heads) % t;
            let shifted: Vec<f64> = row.iter().enumerate().map(|(j, &v)| if j <= query { v as f64 } else { f64::NEG_INFINITY }).collect();
            let max = shifted.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = shifted.iter().map(|v| (v - max).exp()).sum();
            for (j, v) in shifted.iter().enumerate() {
                let want = (v - max).exp() / sum;
                let have = got[r * t + j] as f64;
                assert!((have - want).abs() <= 1e-6 * want + 1e-7, "row {r} col {j}: {have} vs {want}");
            }
        }
    }

    /// A softmax over a symbolic length, or over another axis than the last, stays tract's own.
    #[test]
    fn softmaxes_it_cannot_rewrite_are_left_alone() {
        let mut symbolic = softmax_model(|s| vec![2.to_dim(), s.sym("P").to_dim()], 1);
        assert_eq!(rewrite_softmaxes(&mut symbolic).unwrap(), 0);
        let mut inner = softmax_model(|_| vec![2.to_dim(), 5.to_dim(), 3.to_dim()], 1);
        assert_eq!(rewrite_softmaxes(&mut inner).unwrap(), 0);
        assert!(inner.nodes.iter().any(|n| n.op_is::<Softmax>()));
    }
}

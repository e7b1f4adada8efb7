//! Sums, differences and products one of whose operands repeats over an axis before its last
//! one, as one tract op walking contiguous runs, rewritten in at load.
//!
//! The score graph adds each layer's position embedding (1, T, C) and conditioning (N, 1, C)
//! to its (N, T, C) tokens. tract runs the first as a unicast op and the second on its generic
//! broadcasting path, each ~1.8 ns per value where a plain sum of two tensors takes ~0.35 (on the
//! demo's score of 8 images: 12 such nodes, ~1 ms of ~22). [`BroadcastBinary`] takes, for each
//! run of the trailing axes on which both operands agree, the repeated operand's run at its
//! offset and combines the two runs, which the compiler vectorises.
//!
//! Row vectors (1, .., 1, C) and one value per row (.., 1) are left to tract, which fuses them
//! with their neighbours or has kernels for them.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::{Add, Mul, Sub};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::strides;

/// The arithmetic of a [`BroadcastBinary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Add,
    Sub,
    Mul,
}

impl Arith {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Arith::Add => a + b,
            Arith::Sub => a - b,
            Arith::Mul => a * b,
        }
    }
}

/// `a op b` for f32 a and b of one rank where one of them has the output's shape and the other
/// has size 1 on some of its axes (repeated there); the order of the operands is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastBinary {
    pub op: Arith,
}

impl Op for BroadcastBinary {
    fn name(&self) -> StaticName {
        "BroadcastBinary".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.op)])
    }

    op_as_typed_op!();
}

/// How an operand of shape `small` repeated to `full` lies against it: the length of the runs
/// on which they agree (the trailing axes where their sizes are equal) and, for each run of
/// `full` in order, its offset in the repeated operand (also the masks of [`super::RowSoftmax`]).
pub(super) fn runs(full: &[usize], small: &[usize]) -> TractResult<(usize, Vec<usize>)> {
    let r = full.len();
    ensure!(small.len() == r, "operands of ranks {r} and {}", small.len());
    ensure!(small.iter().zip(full).all(|(s, f)| s == f || *s == 1), "an operand of {small:?} does not broadcast to {full:?}");
    let agree = full.iter().zip(small).rev().take_while(|(f, s)| f == s).count();
    let run: usize = full[r - agree..].iter().product();
    ensure!(run > 0, "runs of no values, {full:?}");
    let outer = &full[..r - agree];
    let ss = strides(small);
    let count: usize = outer.iter().product();
    let offsets = (0..count)
        .map(|o| {
            let (mut rest, mut at) = (o, 0);
            for d in (0..outer.len()).rev() {
                let i = rest % outer[d];
                rest /= outer[d];
                if small[d] != 1 {
                    at += i * ss[d];
                }
            }
            at
        })
        .collect();
    Ok((run, offsets))
}

impl EvalOp for BroadcastBinary {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "BroadcastBinary takes two operands");
        let (sa, sb) = (inputs[0].shape().to_vec(), inputs[1].shape().to_vec());
        let a_full = sa.iter().zip(&sb).all(|(a, b)| a >= b);
        let (full, small) = if a_full { (&sa, &sb) } else { (&sb, &sa) };
        let (run, offsets) = runs(full, small).context("BroadcastBinary")?;
        let (av, bv) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
        let (a, b) = (av.as_slice::<f32>()?, bv.as_slice::<f32>()?);
        let (fv, sv) = if a_full { (a, b) } else { (b, a) };
        let op = self.op;
        let out = super::filled(full, |o| {
            for ((or, fr), &at) in o.chunks_mut(run).zip(fv.chunks(run)).zip(&offsets) {
                let sr = &sv[at..at + run];
                if a_full {
                    or.iter_mut().zip(fr).zip(sr).for_each(|((o, &f), &s)| *o = op.apply(f, s));
                } else {
                    or.iter_mut().zip(fr).zip(sr).for_each(|((o, &f), &s)| *o = op.apply(s, f));
                }
            }
            Ok(())
        })?;
        Ok(tvec!(out))
    }
}

impl TypedOp for BroadcastBinary {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()), "BroadcastBinary takes two f32 operands");
        let (a, b) = (&inputs[0].shape, &inputs[1].shape);
        ensure!(a.rank() == b.rank(), "BroadcastBinary: operands of ranks {} and {}", a.rank(), b.rank());
        let shape: TVec<TDim> = a.iter().zip(b.iter()).map(|(x, y)| if x.is_one() { y.clone() } else { x.clone() }).collect();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = self.output_facts(inputs)?[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n)))
    }

    as_op!();
}

/// The arithmetic of node `id` if it is an f32 sum, difference or product that this module
/// takes (module notes): concrete shapes of one rank, one of them the output's, the other
/// repeated over an axis before a longer one it keeps.
fn broadcast_arith(model: &TypedModel, id: usize) -> Option<Arith> {
    let node = model.node(id);
    let bin = node.op_as::<TypedBinOp>()?;
    if bin.1.is_some() || node.inputs.len() != 2 {
        return None;
    }
    let op = if bin.0.is::<Add>() {
        Arith::Add
    } else if bin.0.is::<Sub>() {
        Arith::Sub
    } else if bin.0.is::<Mul>() {
        Arith::Mul
    } else {
        return None;
    };
    let facts: Vec<&TypedFact> = node.inputs.iter().map(|&i| model.outlet_fact(i)).collect::<TractResult<_>>().ok()?;
    if facts.iter().any(|f| f.datum_type != f32::datum_type()) {
        return None;
    }
    let (a, b) = (facts[0].shape.as_concrete()?, facts[1].shape.as_concrete()?);
    let out = model.outlet_fact(OutletId::new(id, 0)).ok()?.shape.as_concrete()?;
    let small = if a == out && b != out {
        b
    } else if b == out && a != out {
        a
    } else {
        return None;
    };
    if small.len() != out.len() || out.is_empty() || out.contains(&0) {
        return None;
    }
    // Repeated over some axis; its last axis the output's (runs worth a loop); not a row vector.
    let repeated = small.iter().zip(out).any(|(s, o)| *s == 1 && *o > 1);
    let (last, lead) = small.split_last()?;
    (repeated && last == out.last()? && *last >= 8 && lead.iter().any(|&s| s > 1)).then_some(op)
}

/// `model` with every f32 sum, difference and product of the form described in the module notes
/// computed by [`BroadcastBinary`]. Returns how many were replaced.
pub fn speed_up_broadcasts(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(op) = broadcast_arith(model, id) else { continue };
        let node = model.node(id);
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, BroadcastBinary { op })?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(a: &[usize], b: &[usize], op: Box<dyn tract_onnx::tract_core::ops::binary::BinMiniOp>) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("a", f32::fact(a)).unwrap();
        let y = m.add_source("b", f32::fact(b)).unwrap();
        let z = m.wire_node("op", TypedBinOp(op, None), &[x, y]).unwrap();
        m.select_output_outlets(&z).unwrap();
        m
    }

    /// The conditioning's (N, 1, C) and the position embedding's (1, T, C), either side of a
    /// difference, and a product with a repeated middle of rank 4: tract's values.
    #[test]
    fn broadcast_runs_match_tract() {
        let cases: [(&[usize], &[usize]); 5] = [
            (&[3, 5, 16], &[3, 1, 16]),
            (&[3, 5, 16], &[1, 5, 16]),
            (&[1, 5, 16], &[3, 5, 16]),
            (&[2, 4, 3, 8], &[2, 1, 3, 8]),
            (&[2, 4, 3, 8], &[1, 4, 1, 8]),
        ];
        for (a, b) in cases {
            for op in [0, 1, 2] {
                let mk = || -> Box<dyn tract_onnx::tract_core::ops::binary::BinMiniOp> {
                    match op {
                        0 => Box::new(Add),
                        1 => Box::new(Sub),
                        _ => Box::new(Mul),
                    }
                };
                let plain = model(a, b, mk());
                let mut fast = plain.clone();
                assert_eq!(speed_up_broadcasts(&mut fast).unwrap(), 1, "{a:?} {b:?}");
                let feeds = [
                    (a.to_vec(), super::super::test_values(a.iter().product(), 1)),
                    (b.to_vec(), super::super::test_values(b.iter().product(), 2)),
                ];
                let (want, got) = (super::super::test_run(plain, &feeds), super::super::test_run(fast, &feeds));
                assert!(want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits()), "{a:?} op {op} {b:?}");
            }
        }
    }

    /// Row vectors, one value per row, equal shapes and short rows stay tract's.
    #[test]
    fn shapes_tract_handles_are_left_alone() {
        for (a, b) in
            [(&[3usize, 5, 16][..], &[1usize, 1, 16][..]), (&[3, 5, 16], &[3, 5, 1]), (&[3, 5, 16], &[3, 5, 16]), (&[3, 5, 4], &[3, 1, 4])]
        {
            let mut m = model(a, b, Box::new(Add));
            assert_eq!(speed_up_broadcasts(&mut m).unwrap(), 0, "{a:?} + {b:?}");
        }
    }
}

//! Batched products of two activations (the attention's q kᵀ and a v, and their adjoints in
//! the score graph) as one tract op on [`super::gemm`]'s register tiles (AVX-512F, or AVX2 and
//! FMA), rewritten in at load.
//!
//! In the demo's score graph these are (N, H) pairs of 49 x 64 x 49 products: tract moves the
//! head axis of each operand next to the batch (a copy), packs both operands per pair and runs
//! them through its matmul, ~10 ms of the 53 ms of an 8-image score run (8 blocks, 6 products
//! each) for ~0.12 G multiply-adds. [`BatchedMatMul`] reads each pair's operands where they lie
//! (A's rows in place when its K axis is contiguous, else gathered; B packed per pair, a few
//! thousand values) and writes the output rows in place when its N axis is contiguous.
//!
//! [`fuse_batched_matmuls`] replaces each f32 `EinSum` of two non-constant operands with
//! exactly one row axis (A and output), one column axis (B and output), one contracted axis
//! (A and B) and any number of batch axes (all three), of equal sizes in both operands.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::gemm::{self, Panels};
use super::linear::parse_axes;
use super::strides;

/// Where an operand's axes are: the batch axes (in the output's order), then its two others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Axes {
    batch: TVec<usize>,
    first: usize,
    second: usize,
}

/// `C[batch, m, n] = Σ_k A[batch, m, k] B[batch, k, n]`, the axes of A (batch, m, k), B
/// (batch, k, n) and C (batch, m, n) anywhere in each tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchedMatMul {
    a: Axes,
    b: Axes,
    c: Axes,
    out_rank: usize,
}

impl Op for BatchedMatMul {
    fn name(&self) -> StaticName {
        "BatchedMatMul".into()
    }

    op_as_typed_op!();
}

/// A matrix in a tensor, past the batch offset: element (r, c) at `r * rs + c * cs`; `from_b`
/// when it lies in the op's second input (the transposed orientation reads B as its left side).
#[derive(Debug, Clone, Copy)]
struct Mat {
    rs: usize,
    cs: usize,
    from_b: bool,
}

impl Mat {
    fn of(strides: &[usize], axes: &Axes, from_b: bool) -> Self {
        Self { rs: strides[axes.first], cs: strides[axes.second], from_b }
    }

    fn t(self) -> Self {
        Self { rs: self.cs, cs: self.rs, from_b: self.from_b }
    }
}

impl BatchedMatMul {
    /// The output dims from A's and B's (their batch sizes checked equal by the caller); the
    /// output's own axes of size 1 are `one`.
    fn output_dims<D: Clone>(&self, a: &[D], b: &[D], one: D) -> TVec<D> {
        let mut out: TVec<D> = tvec![one; self.out_rank];
        for (o, i) in self.c.batch.iter().zip(&self.a.batch) {
            out[*o] = a[*i].clone();
        }
        out[self.c.first] = a[self.a.first].clone();
        out[self.c.second] = b[self.b.second].clone();
        out
    }
}

impl EvalOp for BatchedMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "BatchedMatMul takes two inputs");
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        for (i, j) in self.a.batch.iter().zip(&self.b.batch) {
            ensure!(sa[*i] == sb[*j], "BatchedMatMul: batch sizes of {sa:?} and {sb:?} differ");
        }
        ensure!(sb[self.b.first] == sa[self.a.second], "BatchedMatMul: {sa:?} and {sb:?} do not chain");
        let shape = self.output_dims(sa, sb, 1);
        let (av, bv) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
        let (a, b) = (av.as_slice::<f32>()?, bv.as_slice::<f32>()?);
        // SAFETY: every value is written below: each batch's M x N block, every block once.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        self.fill(a, b, (sa, sb, &shape), out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl BatchedMatMul {
    /// Writes the product of `a` and `b` (shapes `sa`, `sb`) into `c` (shape `sc`).
    fn fill(&self, a: &[f32], b: &[f32], (sa, sb, sc): (&[usize], &[usize], &[usize]), c: &mut [f32]) {
        let (m, k, n) = (sa[self.a.first], sa[self.a.second], sb[self.b.second]);
        let (ta, tb, tc) = (strides(sa), strides(sb), strides(sc));
        let dims: TVec<usize> = self.a.batch.iter().map(|&i| sa[i]).collect();
        let batches: usize = dims.iter().product();
        // C = A B, or Cᵀ = Bᵀ Aᵀ, whichever copies fewer values: the left side's rows are read
        // in place when contiguous, else gathered; the right side is packed (row copies when its
        // rows are contiguous, a transpose otherwise); the output's rows are written in place
        // when contiguous, else scattered.
        let normal = (Mat::of(&ta, &self.a, false), Mat::of(&tb, &self.b, true), Mat::of(&tc, &self.c, false), m, n);
        let transposed = (normal.1.t(), normal.0.t(), normal.2.t(), n, m);
        let copies = |&(a, b, c, m, n): &(Mat, Mat, Mat, usize, usize)| {
            let moved = |contiguous: bool, values: usize| if contiguous { 0 } else { 4 * values };
            moved(a.cs == 1, m * k) + k * n + moved(b.cs == 1, k * n) + moved(c.cs == 1, m * n)
        };
        let (ma, mb, mc, m, n) = if copies(&transposed) < copies(&normal) { transposed } else { normal };
        let (mut panels, mut gathered, mut result) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..batches {
            let (mut rest, mut offsets) = (index, [0usize; 3]);
            for d in (0..dims.len()).rev() {
                let i = rest % dims[d];
                rest /= dims[d];
                offsets[0] += i * ta[self.a.batch[d]];
                offsets[1] += i * tb[self.b.batch[d]];
                offsets[2] += i * tc[self.c.batch[d]];
            }
            let source = |x: Mat| if x.from_b { (b, offsets[1]) } else { (a, offsets[0]) };
            let ((src_a, oa), (src_b, ob)) = (source(ma), source(mb));
            gemm::pack(&src_b[ob..], (k, n), (mb.rs, mb.cs), &mut panels);
            let packed = Panels { k, n, panels: &panels, bias: None };
            let rows = if ma.cs == 1 {
                (&src_a[oa..], ma.rs)
            } else {
                gathered.resize(m * k, 0.0);
                gemm::copy_strided((src_a, oa, (ma.rs, ma.cs)), (m, k), (&mut gathered[..], 0, (k, 1)));
                (&gathered[..], k)
            };
            if mc.cs == 1 {
                gemm::matmul_strided(rows, m, packed, (&mut c[offsets[2]..], mc.rs));
            } else {
                result.resize(m * n, 0.0);
                gemm::matmul_strided(rows, m, packed, (&mut result[..], n));
                gemm::copy_strided((&result[..], 0, (n, 1)), (m, n), (c, offsets[2], (mc.rs, mc.cs)));
            }
        }
    }
}

impl TypedOp for BatchedMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()), "BatchedMatMul takes two f32 inputs");
        let (a, b): (TVec<TDim>, TVec<TDim>) = (inputs[0].shape.iter().cloned().collect(), inputs[1].shape.iter().cloned().collect());
        Ok(tvec!(f32::fact(self.output_dims(&a, &b, 1.to_dim()))))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let fma = inputs[0].shape.iter().product::<TDim>() * inputs[1].shape[self.b.second].clone();
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma)))
    }

    as_op!();
}

/// The op for `node` if it is an f32 EinSum of two activations as described in the module notes.
fn plan_product(model: &TypedModel, node: &TypedNode) -> TractResult<Option<BatchedMatMul>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if node.inputs.len() != 2 || op.q_params.is_some() || op.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    let Some((sa, sb, so)) = parse_axes(&op.axes.to_string()) else { return Ok(None) };
    let facts = model.node_input_facts(node.id)?;
    if facts.iter().any(|f| f.datum_type != f32::datum_type() || f.konst.is_some())
        || sa.len() != facts[0].rank()
        || sb.len() != facts[1].rank()
    {
        return Ok(None);
    }
    let pos = |s: &[char], c: char| s.iter().position(|&x| x == c);
    let only = |v: Vec<char>| if v.len() == 1 { Some(v[0]) } else { None };
    let rows = only(sa.iter().copied().filter(|c| !sb.contains(c) && so.contains(c)).collect());
    let cols = only(sb.iter().copied().filter(|c| !sa.contains(c) && so.contains(c)).collect());
    let inner = only(sa.iter().copied().filter(|c| sb.contains(c) && !so.contains(c)).collect());
    let (Some(m), Some(n), Some(k)) = (rows, cols, inner) else { return Ok(None) };
    let batch: Vec<char> = so.iter().copied().filter(|c| sa.contains(c) && sb.contains(c)).collect();
    // Every other axis is of size 1 in the one place it appears (tract's decluttering leaves
    // such): nothing summed away, nothing broadcast from one side only.
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let unit = |c: char| match (pos(&sa, c), pos(&sb, c), pos(&so, c)) {
        (Some(i), None, None) => facts[0].shape[i].is_one(),
        (None, Some(i), None) => facts[1].shape[i].is_one(),
        (None, None, Some(i)) => out_fact.shape[i].is_one(),
        _ => false,
    };
    let placed = |c: char| c == m || c == n || c == k || batch.contains(&c);
    if !sa.iter().chain(&sb).chain(&so).all(|&c| placed(c) || unit(c)) {
        return Ok(None);
    }
    let place = |s: &[char], first: char, second: char| -> Option<Axes> {
        Some(Axes { batch: batch.iter().map(|&c| pos(s, c)).collect::<Option<_>>()?, first: pos(s, first)?, second: pos(s, second)? })
    };
    let (Some(a), Some(b), Some(c)) = (place(&sa, m, k), place(&sb, k, n), place(&so, m, n)) else { return Ok(None) };
    let (fa, fb) = (facts[0], facts[1]);
    let same = a.batch.iter().zip(&b.batch).all(|(&i, &j)| fa.shape[i] == fb.shape[j]) && fa.shape[a.second] == fb.shape[b.first];
    Ok(same.then_some(BatchedMatMul { a, b, c, out_rank: so.len() }))
}

/// `model` with every batched product of two activations (see the module notes) computed by
/// one [`BatchedMatMul`] node. Returns how many were replaced.
pub fn fuse_batched_matmuls(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = plan_product(model, node)? else { continue };
        let name = node.name.clone();
        let inputs = node.inputs.clone();
        super::substitute(model, OutletId::new(id, 0), &inputs, |patch, taps| {
            Ok(patch.wire_node(format!("{name}.batched_matmul"), op, taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::{test_run as run, test_values as values};

    /// The attention products of the score graph as tract types them (batch and head axes in
    /// several places, A's K axis not contiguous, C's N axis not contiguous), and a plain
    /// batched product: each rewritten one gives what tract's own EinSum gave.
    #[test]
    fn rewritten_products_match_tract() {
        let cases: [(&str, &[usize], &[usize]); 7] = [
            ("ambk,anbk->abmn", &[3, 7, 2, 20], &[3, 9, 2, 20]),
            ("akbm,abkn->abnm", &[3, 20, 2, 7], &[3, 2, 20, 9]),
            ("abmk,akbn->ambn", &[3, 2, 7, 20], &[3, 20, 2, 9]),
            ("abmk,akbn->abmn", &[3, 2, 7, 20], &[3, 20, 2, 9]),
            ("abmk,abkn->abmn", &[2, 3, 13, 40], &[2, 3, 40, 35]),
            // Axes of size 1 in one place only, as decluttering leaves them for one image.
            ("ambk,bnk->bmn", &[1, 7, 2, 20], &[2, 9, 20]),
            ("bmk,bkn->abmn", &[2, 7, 20], &[2, 20, 9]),
        ];
        for (axes, a_shape, b_shape) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(a_shape)).unwrap();
            let z = model.add_source("z", f32::fact(b_shape)).unwrap();
            let y = model.wire_node("mm", EinSum::new(axes.parse().unwrap(), f32::datum_type()), &[x, z]).unwrap()[0];
            model.select_output_outlets(&[y]).unwrap();
            let mut fused = model.clone();
            assert_eq!(fuse_batched_matmuls(&mut fused).unwrap(), 1, "{axes}");
            let inputs = [(a_shape.to_vec(), values(a_shape.iter().product(), 1)), (b_shape.to_vec(), values(b_shape.iter().product(), 2))];
            super::super::test_assert_close(&run(fused, &inputs), &run(model, &inputs), 1e-5, axes);
        }
    }

    /// A product summing an axis away, or by a constant, is not this op's.
    #[test]
    fn other_products_are_left_alone() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let z = model.add_source("z", f32::fact([2, 4, 5])).unwrap();
        let w = model.add_const("w", Tensor::from_shape(&[4, 5], &values(20, 3)).unwrap()).unwrap();
        let summed = model.wire_node("summed", EinSum::new("amk,akn->n".parse().unwrap(), f32::datum_type()), &[x, z]).unwrap()[0];
        let by_const = model.wire_node("const", EinSum::new("amk,kn->amn".parse().unwrap(), f32::datum_type()), &[x, w]).unwrap()[0];
        model.select_output_outlets(&[summed, by_const]).unwrap();
        assert_eq!(fuse_batched_matmuls(&mut model).unwrap(), 0);
    }
}

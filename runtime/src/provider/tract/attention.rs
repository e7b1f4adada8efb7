//! Attention over a KV cache as one tract op, rewritten in at load.
//!
//! A growing-cache step graph attends with one query per row to every cached key:
//! `softmax(q kᵀ) v` with q (N, H, 1, d) and k, v (N, H, P + 1, d). tract runs it as two batched
//! matrix products of N H pairs with M = 1 each, and per pair it packs both operands and calls
//! a kernel meant for large tiles; the concatenated cache is first copied into the (N H, P + 1,
//! d) layout its matmul wants (a copy, because the cache is also a graph output). On the demo's
//! deepest step graph (32 rows, 24 cached) that attention was ~0.65 ms of 2.7 ms per block stack
//! of 3, for ~0.2 M multiply-adds. [`KvAttention`] computes it directly from the cache tensors:
//! per (row, head) the dot products of the query with each key, the row softmax (subtract the
//! maximum, exponentiate, normalise), and the weighted sum of the values, with no packing and no
//! copy.
//!
//! [`fuse_kv_attention`] finds the pattern in a typed model before optimisation:
//! `EinSum(q, Move(k)) -> Softmax(last axis) -> EinSum(·, v)` with the matmul axes of ONNX
//! MatMul (`abmk,abkn->abmn`), f32, nothing else reading the scores or the weights; or with an
//! Add of one mask row of L values before the softmax when there is one query (the fixed-length
//! cache's step: its later slots masked). The full-sequence graphs' causal mask covers T queries,
//! so their attention is left to tract. It runs on the model as loaded from ONNX, before
//! decluttering folds the query axis of length 1 into the einsums in ways that vary.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::pattern::{binary, only_reader};

/// `softmax(q kᵀ + mask) v` over the last two axes, no scale (the query comes scaled): q (.., M,
/// d), k (.., L, d), v (.., L, e) -> (.., M, e), f32, the leading axes equal; the optional fourth
/// input is an additive mask of L values, the same for every (pair, query) (the fixed-length
/// cache's: 0 up to the step's position, a large negative score after).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KvAttention;

impl Op for KvAttention {
    fn name(&self) -> StaticName {
        "KvAttention".into()
    }

    op_as_typed_op!();
}

/// The sizes of one evaluation: `pairs` independent (.., M, ·) blocks.
#[derive(Debug, Clone, Copy)]
struct Dims {
    pairs: usize,
    queries: usize,
    keys: usize,
    depth: usize,
    out: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize], v: &[usize]) -> TractResult<Self> {
        let r = q.len();
        ensure!(r >= 2 && k.len() == r && v.len() == r, "KvAttention: q, k, v of ranks {}, {}, {}", q.len(), k.len(), v.len());
        ensure!(q[..r - 2] == k[..r - 2] && q[..r - 2] == v[..r - 2], "KvAttention: leading axes of {q:?}, {k:?}, {v:?} differ");
        ensure!(q[r - 1] == k[r - 1] && k[r - 2] == v[r - 2], "KvAttention: q {q:?}, k {k:?}, v {v:?} do not chain");
        Ok(Self { pairs: q[..r - 2].iter().product(), queries: q[r - 2], keys: k[r - 2], depth: q[r - 1], out: v[r - 1] })
    }
}

impl EvalOp for KvAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3 || inputs.len() == 4, "KvAttention takes q, k, v and maybe a mask");
        let dims = Dims::of(inputs[0].shape(), inputs[1].shape(), inputs[2].shape())?;
        let mask_view = inputs.get(3).map(|m| m.try_as_plain_ram()).transpose()?;
        let mask = mask_view.as_ref().map(|m| m.as_slice::<f32>()).transpose()?;
        ensure!(
            mask.is_none_or(|m| m.len() == dims.keys),
            "KvAttention: a mask of {} values for {} keys",
            mask.map_or(0, |m| m.len()),
            dims.keys
        );
        let (qv, kv, vv) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?, inputs[2].try_as_plain_ram()?);
        let (q, k, v) = (qv.as_slice::<f32>()?, kv.as_slice::<f32>()?, vv.as_slice::<f32>()?);
        let mut shape: TVec<usize> = inputs[0].shape().into();
        let last = shape.len() - 1;
        shape[last] = dims.out;
        let mut out = vec![0.0f32; dims.pairs * dims.queries * dims.out];
        attend(q, k, v, mask, &mut out, dims);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for KvAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3 || inputs.len() == 4, "KvAttention takes q, k, v and maybe a mask");
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()), "KvAttention computes in f32");
        let (q, k, v) = (&inputs[0].shape, &inputs[1].shape, &inputs[2].shape);
        let r = q.rank();
        ensure!(r >= 2 && k.rank() == r && v.rank() == r, "KvAttention: q, k, v of ranks {}, {}, {}", q.rank(), k.rank(), v.rank());
        let mut shape: TVec<TDim> = q.iter().cloned().collect();
        shape[r - 1] = v[r - 1].clone();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (q, k, v) = (&inputs[0].shape, &inputs[1].shape, &inputs[2].shape);
        let r = q.rank();
        let keys = k[r - 2].clone();
        let fma = q.iter().take(r - 1).product::<TDim>() * keys * (q[r - 1].clone() + v[r - 1].clone());
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma)))
    }

    as_op!();
}

/// The attention of every (pair, query), written into `out`.
fn attend(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &mut [f32], dims: Dims) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: the CPU has AVX2 (checked just above, by the CPU's own answer).
        unsafe { attend_avx2(q, k, v, mask, out, dims) };
        return;
    }
    attend_portable(q, k, v, mask, out, dims)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &mut [f32], dims: Dims) {
    attend_portable(q, k, v, mask, out, dims)
}

/// The loops, inlined into each target-feature entry so the compiler vectorises them for it.
#[inline(always)]
fn attend_portable(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &mut [f32], dims: Dims) {
    let Dims { pairs, queries, keys, depth, out: width } = dims;
    let mut weights = vec![0.0f32; keys];
    for p in 0..pairs {
        let kp = &k[p * keys * depth..(p + 1) * keys * depth];
        let vp = &v[p * keys * width..(p + 1) * keys * width];
        for m in 0..queries {
            let row = (p * queries + m) * depth;
            let qm = &q[row..row + depth];
            let mut max = f32::NEG_INFINITY;
            for (j, (w, key)) in weights.iter_mut().zip(kp.chunks_exact(depth)).enumerate() {
                *w = dot(qm, key) + mask.map_or(0.0, |m| m[j]);
                max = max.max(*w);
            }
            let mut sum = 0.0f32;
            for w in weights.iter_mut() {
                *w = (*w - max).exp();
                sum += *w;
            }
            let o = &mut out[(p * queries + m) * width..(p * queries + m + 1) * width];
            for (&w, value) in weights.iter().zip(vp.chunks_exact(width)) {
                for (o, &x) in o.iter_mut().zip(value) {
                    *o += w * x;
                }
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Σ a_i b_i with 16 independent partial sums (so the loop vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The einsums of ONNX MatMul on rank-4 operands as tract types them: (.., M, K) x (.., K, N),
/// and the same with the second operand transposed, (.., M, K) x (.., N, K).
const MATMUL: &str = "abmk,abkn->abmn";
const MATMUL_BT: &str = "abmk,abnk->abmn";

/// An attention found in a model: its q, k, v, its mask (if any) and the node computing its
/// output.
struct Found {
    q: OutletId,
    k: OutletId,
    v: OutletId,
    mask: Option<OutletId>,
    out: usize,
}

/// The mask added to the scores at `add`, if `add` is an f32 Add of the scores (read by nothing
/// else) and an additive mask of (1, 1, 1, L) values, with one query: (the scores' node, the
/// mask).
fn masked_scores(model: &TypedModel, add: &TypedNode) -> TractResult<Option<(usize, OutletId)>> {
    let Some((a, b)) = binary::<math::Add>(model, OutletId::new(add.id, 0)) else { return Ok(None) };
    for (scores, mask) in [(a, b), (b, a)] {
        if !model.node(scores.node).op_is::<EinSum>() || only_reader(model, scores) != Some(add.id) {
            continue;
        }
        let (sf, mf) = (model.outlet_fact(scores)?, model.outlet_fact(mask)?);
        let one_query = sf.rank() == 4 && sf.shape[2].is_one();
        let row =
            mf.rank() == 4 && mf.datum_type == f32::datum_type() && mf.shape[..3].iter().all(|d| d.is_one()) && mf.shape[3] == sf.shape[3];
        if one_query && row && model.outlet_fact(OutletId::new(add.id, 0))?.shape == sf.shape {
            return Ok(Some((scores.node, mask)));
        }
    }
    Ok(None)
}

/// The attention whose Softmax is node `id`, if it is the middle of `softmax(q kᵀ) v` as
/// described in the module notes.
fn match_attention(model: &TypedModel, id: usize) -> TractResult<Option<Found>> {
    let node = model.node(id);
    let Some(sm) = node.op_as::<Softmax>() else { return Ok(None) };
    let fact = model.outlet_fact(node.inputs[0])?;
    if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    if fact.rank() != 4 || sm.axes.as_slice() != [3] {
        return Ok(None);
    }
    // The scores, or the scores plus a mask (one query: the fixed-length cache's step).
    if only_reader(model, node.inputs[0]) != Some(id) {
        return Ok(None);
    }
    let before = model.node(node.inputs[0].node);
    let (scores, mask) = match masked_scores(model, before)? {
        Some((scores, mask)) => (model.node(scores), Some(mask)),
        None => (before, None),
    };
    let Some(qk) = scores.op_as::<EinSum>() else { return Ok(None) };
    if scores.inputs.len() != 2 || qk.q_params.is_some() {
        return Ok(None);
    }
    let axes = qk.axes.to_string();
    let k = if axes == MATMUL_BT {
        scores.inputs[1]
    } else if axes == MATMUL {
        let kt = model.node(scores.inputs[1].node);
        match kt.op_as::<AxisOp>() {
            Some(AxisOp::Move(2, 3)) | Some(AxisOp::Move(3, 2)) => kt.inputs[0],
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let Some(out) = only_reader(model, OutletId::new(id, 0)) else { return Ok(None) };
    let weighted = model.node(out);
    let Some(av) = weighted.op_as::<EinSum>() else { return Ok(None) };
    if weighted.inputs.len() != 2 || av.q_params.is_some() || weighted.inputs[0] != OutletId::new(id, 0) || av.axes.to_string() != MATMUL {
        return Ok(None);
    }
    let (q, v) = (scores.inputs[0], weighted.inputs[1]);
    let ok = [q, k, v].iter().all(|&o| model.outlet_fact(o).is_ok_and(|f| f.datum_type == f32::datum_type() && f.rank() == 4));
    Ok(ok.then_some(Found { q, k, v, mask, out }))
}

/// `model` with every attention over a KV cache (see the module notes) computed by one
/// [`KvAttention`] node. Returns how many were replaced.
pub fn fuse_kv_attention(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(found) = match_attention(model, id)? else { continue };
        let name = model.node(id).name.clone();
        let mut inputs: TVec<OutletId> = tvec![found.q, found.k, found.v];
        let len = match found.mask {
            Some(mask) => {
                inputs.push(mask);
                Some(model.outlet_fact(mask)?.shape[3].clone())
            }
            None => None,
        };
        super::substitute(model, OutletId::new(found.out, 0), &inputs, |patch, taps| {
            let mut taps: TVec<OutletId> = taps.into();
            if let Some(len) = len {
                // The (1, 1, 1, L) mask as L values.
                let dims = tvec![1.to_dim(), 1.to_dim(), 1.to_dim(), len.clone()];
                taps[3] = patch.wire_node(format!("{name}.mask_row"), AxisOp::Reshape(0, dims, tvec![len]), &[taps[3]])?[0];
            }
            Ok(patch.wire_node(format!("{name}.kv_attention"), KvAttention, &taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::{test_run as run, test_values as values};

    /// softmax(q kᵀ) v in f64, row by row.
    fn reference(q: &[f32], k: &[f32], v: &[f32], (pairs, m, l, d, e): (usize, usize, usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0f64; pairs * m * e];
        for p in 0..pairs {
            for i in 0..m {
                let s: Vec<f64> =
                    (0..l).map(|j| (0..d).map(|c| q[(p * m + i) * d + c] as f64 * k[(p * l + j) * d + c] as f64).sum()).collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for (j, x) in s.iter().enumerate() {
                    for c in 0..e {
                        out[(p * m + i) * e + c] += (x - max).exp() / sum * v[(p * l + j) * e + c] as f64;
                    }
                }
            }
        }
        out
    }

    /// The op against the f64 computation: one query and several, a depth that is not a
    /// multiple of the vector width, a value width unlike the depth.
    #[test]
    fn kv_attention_is_softmax_of_scores_times_values() {
        for (m, l, d, e) in [(1, 25, 64, 64), (3, 7, 21, 5), (1, 1, 16, 16)] {
            let (a, h) = (2, 3);
            // q pre-scaled by 1/8 as the model's is (scores of order 1, as in the model).
            let q: Vec<f32> = values(a * h * m * d, 1).iter().map(|x| x * 0.125).collect();
            let (k, v) = (values(a * h * l * d, 2), values(a * h * l * e, 3));
            let t = |s: &[usize], x: &[f32]| Tensor::from_shape(s, x).unwrap().into_tvalue();
            let out = KvAttention
                .eval(&EvalContext::out_of_plan(), tvec![t(&[a, h, m, d], &q), t(&[a, h, l, d], &k), t(&[a, h, l, e], &v)])
                .unwrap();
            // A mask that shuts out the later half of the keys is the attention over the earlier.
            if l > 1 {
                let keep = l / 2 + 1;
                let mask: Vec<f32> = (0..l).map(|j| if j < keep { 0.0 } else { -1e9 }).collect();
                let masked = KvAttention
                    .eval(
                        &EvalContext::out_of_plan(),
                        tvec![t(&[a, h, m, d], &q), t(&[a, h, l, d], &k), t(&[a, h, l, e], &v), t(&[l], &mask)],
                    )
                    .unwrap();
                let first =
                    |x: &[f32], w: usize| -> Vec<f32> { (0..a * h).flat_map(|p| x[p * l * w..(p * l + keep) * w].to_vec()).collect() };
                let want = reference(&q, &first(&k, d), &first(&v, e), (a * h, m, keep, d, e));
                let got = masked[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((*g as f64 - w).abs() <= 2e-6 * w.abs().max(1.0), "masked ({m}, {l}, {d}, {e}) at {i}: {g} vs {w}");
                }
            }
            assert_eq!(out[0].shape(), &[a, h, m, e]);
            let got = out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>();
            let want = reference(&q, &k, &v, (a * h, m, l, d, e));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - w).abs() <= 2e-6 * w.abs().max(1.0), "({m}, {l}, {d}, {e}) at {i}: {g} vs {w}");
            }
        }
    }

    /// A mask added to the scores: none, one per row and head (not this op's), or one for all
    /// (the fixed-length cache's).
    #[derive(Clone, Copy)]
    enum Mask {
        None,
        PerRow,
        Shared,
    }

    /// The pattern as tract types an ONNX step graph: q (N, 2, 1, 8) against a cache of P + 1
    /// keys, scores by EinSum with the keys' last axes swapped, Softmax, EinSum with the values.
    fn step_attention(mask: Mask) -> TypedModel {
        let mut model = TypedModel::default();
        let (n, p) = (model.symbols.sym("N"), model.symbols.sym("P"));
        let cache = |l: TDim| f32::fact([n.to_dim(), 2.to_dim(), l, 8.to_dim()]);
        let q = model.add_source("q", cache(1.to_dim())).unwrap();
        let k = model.add_source("k", cache(p.to_dim() + 1)).unwrap();
        let v = model.add_source("v", cache(p.to_dim() + 1)).unwrap();
        let kt = model.wire_node("kt", AxisOp::Move(2, 3), &[k]).unwrap()[0];
        let mut s = model.wire_node("scores", EinSum::new(MATMUL.parse().unwrap(), f32::datum_type()), &[q, kt]).unwrap()[0];
        let shape = match mask {
            Mask::None => None,
            Mask::PerRow => Some(f32::fact([n.to_dim(), 2.to_dim(), 1.to_dim(), p.to_dim() + 1])),
            Mask::Shared => Some(f32::fact([1.to_dim(), 1.to_dim(), 1.to_dim(), p.to_dim() + 1])),
        };
        if let Some(fact) = shape {
            let m = model.add_source("mask", fact).unwrap();
            s = model.wire_node("masked", math::add(), &[s, m]).unwrap()[0];
        }
        let op = Softmax { axes: tvec![3], quant_output_dt: None, kind: SoftmaxKind::Softmax };
        let a = model.wire_node("softmax", op, &[s]).unwrap()[0];
        let o = model.wire_node("out", EinSum::new(MATMUL.parse().unwrap(), f32::datum_type()), &[a, v]).unwrap()[0];
        model.select_output_outlets(&[o]).unwrap();
        model
    }

    /// The rewrite replaces the step's attention and leaves its outputs as tract computed them
    /// before; a masked attention is not touched.
    #[test]
    fn fused_step_attention_gives_the_same_outputs() {
        let (n, l) = (3, 6);
        let mut mask = vec![0.0f32; l];
        mask[4..].iter_mut().for_each(|m| *m = -1e9);
        for (kind, extra) in [(Mask::None, None), (Mask::Shared, Some((vec![1, 1, 1, l], mask)))] {
            let original = step_attention(kind);
            let mut fused = original.clone();
            assert_eq!(fuse_kv_attention(&mut fused).unwrap(), 1);
            assert!(fused.nodes.iter().any(|n| n.op_is::<KvAttention>()));
            let mut inputs = vec![
                (vec![n, 2, 1, 8], values(n * 16, 4)),
                (vec![n, 2, l, 8], values(n * 16 * l, 5)),
                (vec![n, 2, l, 8], values(n * 16 * l, 6)),
            ];
            inputs.extend(extra);
            let (want, got) = (run(original, &inputs), run(fused, &inputs));
            assert_eq!(want.len(), n * 16);
            super::super::test_assert_close(&got, &want, 1e-6, "the fused attention");
        }
        let mut per_row = step_attention(Mask::PerRow);
        assert_eq!(fuse_kv_attention(&mut per_row).unwrap(), 0);
    }
}

//! Products of an activation with a constant matrix (the linear layers, forward and adjoint) as
//! one tract op on [`super::gemm`]'s register tiles (AVX-512F, or AVX2 and FMA), rewritten in at
//! load.
//!
//! tract's f32 matrix kernel on this machine's AVX-512 cores reaches ~87 GFLOP/s on the demo's
//! linear layers, and it packs the activation before every product; ONNX Runtime's MLAS reaches
//! ~145. The score graph is ~1.4 G multiply-adds per 8 images, nearly all in those layers, so
//! that kernel was most of the gap between the engines (tract 1.5x ONNX Runtime's score time).
//! [`ConstLinear`] computes the product from the activation as it lies (copied only when its
//! axes are not rows-then-contraction) against the constant packed once when the plan is made,
//! with the bias of a following `Add` folded in.
//!
//! [`fuse_const_linears`] replaces each f32 `EinSum` of two operands, one of them constant, that
//! is a plain matrix product: no axis shared by both operands and the output (batch), nothing
//! summed away but the contracted axes, and the output's axes those of the activation followed
//! by those of the constant.

use std::sync::Arc;

use tract_onnx::prelude::tract_ndarray::IxDyn;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::gemm::{self, PackedB};

/// Where an output axis's size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutAxis {
    /// The activation's axis at this place (after the permutation).
    A(usize),
    /// A size of the constant (or 1 for an axis of size 1 in the output only).
    Fixed(usize),
}

/// `A x B (+ bias)`: the activation A's axes, permuted by `a_perm` when given, are the output's
/// rows (M values), then the contracted axes (K values), then axes of size 1; B is constant,
/// K x N; the output's axes are described by `out` (in memory the M x N product).
#[derive(Debug, Clone)]
pub struct ConstLinear {
    b: Arc<PackedB>,
    a_perm: Option<TVec<usize>>,
    out: TVec<OutAxis>,
}

impl PartialEq for ConstLinear {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.b, &other.b) && self.a_perm == other.a_perm && self.out == other.out
    }
}

impl Eq for ConstLinear {}

impl Op for ConstLinear {
    fn name(&self) -> StaticName {
        "ConstLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("K {} N {} bias {} permute {:?}", self.b.k(), self.b.n(), self.b.has_bias(), self.a_perm)])
    }

    op_as_typed_op!();
}

impl ConstLinear {
    /// The output shape for an activation of shape `a` (after the permutation).
    fn output_dims<D: Clone>(&self, a: &[D], fixed: impl Fn(usize) -> D) -> TVec<D> {
        self.out
            .iter()
            .map(|o| match *o {
                OutAxis::A(i) => a[i].clone(),
                OutAxis::Fixed(n) => fixed(n),
            })
            .collect()
    }
}

impl EvalOp for ConstLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "ConstLinear takes one input");
        let view = inputs[0].to_plain_array_view::<f32>()?;
        let view = match &self.a_perm {
            Some(p) => view.permuted_axes(IxDyn(p)),
            None => view,
        };
        let a = view.as_standard_layout();
        let a = a.as_slice().context("ConstLinear: activation not contiguous")?;
        let shape = self.output_dims(view.shape(), |c| c);
        let m = a.len() / self.b.k().max(1);
        ensure!(m * self.b.k() == a.len(), "ConstLinear: activation of shape {:?} does not hold rows of K = {}", view.shape(), self.b.k());
        // SAFETY: `matmul` writes every value of the output before it is read.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        gemm::matmul(a, m, self.b.view(), out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for ConstLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "ConstLinear takes one f32 input");
        let dims: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let dims: TVec<TDim> = match &self.a_perm {
            Some(p) => p.iter().map(|&i| dims[i].clone()).collect(),
            None => dims,
        };
        Ok(tvec!(f32::fact(self.output_dims(&dims, |c| c.to_dim()))))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().product::<TDim>() / self.b.k() as u64;
        Ok(tvec!((Cost::FMA(f32::datum_type()), rows * (self.b.k() * self.b.n()) as u64)))
    }

    as_op!();
}

/// The einsum `axes` ("amk,kn->amn") as its two input strings and its output string.
pub(super) fn parse_axes(axes: &str) -> Option<(Vec<char>, Vec<char>, Vec<char>)> {
    let (ins, out) = axes.split_once("->")?;
    let (a, b) = ins.split_once(',')?;
    let chars = |s: &str| s.chars().collect::<Vec<_>>();
    let unique = |v: &Vec<char>| v.iter().enumerate().all(|(i, c)| !v[..i].contains(c));
    let (a, b, out) = (chars(a), chars(b), chars(out));
    (unique(&a) && unique(&b) && unique(&out) && !out.contains(&',')).then_some((a, b, out))
}

/// How a matrix product found in the model is computed: its activation input, the constant B
/// as (K, N), the permutation of the activation (if any), the output's axes, and the number of
/// the output's axes of size above 1 that come from B (a bias folds in when that is one).
struct Plan {
    activation: OutletId,
    b: Vec<f32>,
    k: usize,
    n: usize,
    a_perm: Option<TVec<usize>>,
    out: TVec<OutAxis>,
    col_axes: usize,
}

/// The plan for `node` if it is an f32 EinSum of an activation and a constant that is a plain
/// matrix product (see the module notes). Axes of size 1 found in one place only (tract's
/// decluttering leaves such, e.g. "mk,kn->n" for one row) are ignored: they do not move data.
fn plan_product(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Plan>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if node.inputs.len() != 2 || op.q_params.is_some() || op.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    let Some((s0, s1, so)) = parse_axes(&op.axes.to_string()) else { return Ok(None) };
    let facts = model.node_input_facts(node.id)?;
    if facts.iter().any(|f| f.datum_type != f32::datum_type()) {
        return Ok(None);
    }
    let (ai, (sa, sb)) = match (facts[0].konst.is_some(), facts[1].konst.is_some()) {
        (false, true) => (0, (s0, s1)),
        (true, false) => (1, (s1, s0)),
        _ => return Ok(None),
    };
    let (fa, fb) = (facts[ai], facts[1 - ai]);
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let konst = fb.konst.clone().context("constant operand")?;
    if sa.len() != fa.rank() || sb.len() != fb.rank() || so.len() != out_fact.rank() {
        return Ok(None);
    }
    let pos = |s: &[char], c: &char| s.iter().position(|x| x == c).expect("axis present");
    let b_shape = konst.shape().to_vec();
    let unit = |c: &char| {
        if sa.contains(c) {
            fa.shape[pos(&sa, c)].is_one()
        } else if sb.contains(c) {
            b_shape[pos(&sb, c)] == 1
        } else {
            out_fact.shape[pos(&so, c)].is_one()
        }
    };
    let contracted: Vec<char> = sa.iter().copied().filter(|c| sb.contains(c) && !so.contains(c)).collect();
    let rows: Vec<char> = so.iter().copied().filter(|c| sa.contains(c) && !sb.contains(c)).collect();
    let cols: Vec<char> = so.iter().copied().filter(|c| sb.contains(c) && !sa.contains(c)).collect();
    // Every other axis (in one place only, or shared by both operands and the output) must be
    // of size 1.
    let placed = |c: &char| contracted.contains(c) || rows.contains(c) || cols.contains(c);
    if contracted.is_empty() || !sa.iter().chain(&sb).chain(&so).all(|c| placed(c) || unit(c)) {
        return Ok(None);
    }
    // In memory the output must be the rows then the columns (axes of size 1 aside).
    let laid: Vec<char> = so.iter().copied().filter(|c| !unit(c)).collect();
    let wanted: Vec<char> = rows.iter().chain(&cols).copied().filter(|c| !unit(c)).collect();
    if laid != wanted {
        return Ok(None);
    }
    // A as rows, contracted, then its other axes (of size 1).
    let mut order: Vec<usize> = rows.iter().chain(&contracted).map(|c| pos(&sa, c)).collect();
    let rest: Vec<usize> = (0..sa.len()).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    let moves = |o: &[usize]| o.iter().map(|&i| sa[i]).filter(|c| !unit(c)).collect::<Vec<_>>();
    let identity: Vec<usize> = (0..sa.len()).collect();
    let a_perm = (moves(&order) != moves(&identity)).then(|| order.iter().copied().collect::<TVec<_>>());
    // The activation's axes as the op sees them (permuted, or as they are).
    let order_a = if a_perm.is_some() { order } else { identity };
    // The activation's contracted dims must match the constant's.
    for c in &contracted {
        if fa.shape[pos(&sa, c)] != b_shape[pos(&sb, c)].to_dim() {
            return Ok(None);
        }
    }
    let mut b_order: Vec<usize> = contracted.iter().chain(&cols).map(|c| pos(&sb, c)).collect();
    let rest: Vec<usize> = (0..sb.len()).filter(|i| !b_order.contains(i)).collect();
    b_order.extend(rest);
    let b_view = konst.to_plain_array_view::<f32>()?;
    let b: Vec<f32> = b_view.permuted_axes(IxDyn(&b_order)).iter().copied().collect();
    let k: usize = contracted.iter().map(|c| b_shape[pos(&sb, c)]).product();
    let n: usize = cols.iter().map(|c| b_shape[pos(&sb, c)]).product();
    let out = so
        .iter()
        .map(|c| {
            if rows.contains(c) {
                OutAxis::A(order_a.iter().position(|&i| sa[i] == *c).expect("a row axis"))
            } else if cols.contains(c) {
                OutAxis::Fixed(b_shape[pos(&sb, c)])
            } else {
                OutAxis::Fixed(1)
            }
        })
        .collect();
    let col_axes = cols.iter().filter(|c| !unit(c)).count();
    Ok(Some(Plan { activation: node.inputs[ai], b, k, n, a_perm, out, col_axes }))
}

/// The constant bias of an `Add` that is the only reader of `outlet` and adds (1, .., 1, N)
/// values along the product's last axis: the bias and the Add node. `col_axes`: the product's
/// axes (of size above 1) from the constant; a bias needs them to be one, the last.
fn bias_after(model: &TypedModel, outlet: OutletId, n: usize, col_axes: usize) -> TractResult<Option<(Vec<f32>, usize)>> {
    let last_is_n = model.outlet_fact(outlet)?.shape.last().is_some_and(|d| *d == n.to_dim());
    if col_axes != 1 || !last_is_n || model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let [reader] = model.outlet_successors(outlet) else { return Ok(None) };
    let add = model.node(reader.node);
    let Some(bin) = add.op_as::<TypedBinOp>() else { return Ok(None) };
    if !bin.0.is::<math::Add>() || bin.1.is_some() || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = add.inputs[1 - reader.slot];
    let (fact, out) = (model.outlet_fact(other)?, model.outlet_fact(outlet)?);
    let Some(konst) = fact.konst.clone() else { return Ok(None) };
    let shape = konst.shape();
    let broadcast = shape.len() <= out.rank() && shape.last() == Some(&n) && shape[..shape.len() - 1].iter().all(|&d| d == 1);
    if konst.datum_type() != f32::datum_type() || !broadcast || model.outlet_fact(OutletId::new(add.id, 0))?.shape != out.shape {
        return Ok(None);
    }
    Ok(Some((konst.to_plain_array_view::<f32>()?.iter().copied().collect(), add.id)))
}

/// `model` with every f32 product of an activation and a constant matrix (see the module notes)
/// computed by one [`ConstLinear`] node, a following bias Add folded in. Returns how many.
pub fn fuse_const_linears(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(plan) = plan_product(model, node)? else { continue };
        let name = node.name.clone();
        let (bias, last) = match bias_after(model, OutletId::new(id, 0), plan.n, plan.col_axes)? {
            Some((bias, add)) => (Some(bias), add),
            None => (None, id),
        };
        let op = ConstLinear { b: Arc::new(PackedB::new(&plan.b, plan.k, plan.n, bias.as_deref())), a_perm: plan.a_perm, out: plan.out };
        super::substitute(model, OutletId::new(last, 0), &[plan.activation], |patch, taps| {
            Ok(patch.wire_node(format!("{name}.const_linear"), op, taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_values as values;

    fn konst(model: &mut TypedModel, name: &str, shape: &[usize], seed: usize) -> OutletId {
        let n = shape.iter().product();
        model.add_const(name, Tensor::from_shape(shape, &values(n, seed)).unwrap()).unwrap()
    }

    fn run(model: TypedModel, shape: &[usize], x: &[f32]) -> Vec<f32> {
        super::super::test_run(model, &[(shape.to_vec(), x.to_vec())])
    }

    /// The products a linear layer and its adjoint give tract: x (N, T, K) by a constant
    /// (K, M) with a bias after; heads (N, T, H, D) by (H, D, M) (two contracted axes); heads in
    /// (N, H, T, D) by (H, D, M) (the activation permuted); and the constant on the left. Each
    /// rewritten product gives what tract's own EinSum gave.
    #[test]
    fn rewritten_products_match_tract() {
        // (axes, activation shape, constant shape, bias after, constant first)
        type Case = (&'static str, Vec<usize>, Vec<usize>, bool, bool);
        let cases: [Case; 7] = [
            ("amk,kn->amn", vec![3, 7, 40], vec![40, 50], true, false),
            ("ambk,bkn->amn", vec![2, 5, 2, 16], vec![2, 16, 33], false, false),
            ("abmk,bkn->amn", vec![2, 2, 5, 16], vec![2, 16, 33], false, false),
            ("kn,amk->amn", vec![3, 4, 20], vec![20, 9], false, true),
            // Axes of size 1 in one place only, as decluttering leaves them for one row.
            ("amk,kn->mn", vec![1, 6, 20], vec![20, 9], true, false),
            ("mk,kn->n", vec![1, 20], vec![20, 9], true, false),
            ("k,kn->mn", vec![20], vec![20, 9], false, false),
        ];
        for (axes, a_shape, b_shape, with_bias, const_first) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(&a_shape)).unwrap();
            let w = konst(&mut model, "w", &b_shape, 2);
            let inputs = if const_first { [w, x] } else { [x, w] };
            let mut y = model.wire_node("mm", EinSum::new(axes.parse().unwrap(), f32::datum_type()), &inputs).unwrap()[0];
            if with_bias {
                let n = *b_shape.last().unwrap();
                let rank = axes.split("->").nth(1).unwrap().len();
                let mut shape = vec![1; rank - 1];
                shape.push(n);
                let bias = konst(&mut model, "bias", &shape, 3);
                y = model.wire_node("add_bias", math::add(), &[y, bias]).unwrap()[0];
            }
            model.select_output_outlets(&[y]).unwrap();
            let mut fused = model.clone();
            assert_eq!(fuse_const_linears(&mut fused).unwrap(), 1, "{axes}");
            assert!(fused.nodes.iter().all(|n| !n.op_is::<EinSum>()), "{axes}: the EinSum is still there");
            if with_bias {
                assert!(fused.nodes.iter().all(|n| !n.op_is::<TypedBinOp>()), "{axes}: the bias Add is still there");
            }
            let x = values(a_shape.iter().product(), 5);
            super::super::test_assert_close(&run(fused, &a_shape, &x), &run(model, &a_shape, &x), 1e-5, axes);
        }
    }

    /// Products that are not plain matrix products by a constant are left to tract: two
    /// activations, and a batch axis shared by both operands and the output.
    #[test]
    fn other_products_are_left_alone() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let z = model.add_source("z", f32::fact([2, 4, 5])).unwrap();
        let w = konst(&mut model, "w", &[2, 4, 5], 1);
        let both = model.wire_node("both", EinSum::new("amk,akn->amn".parse().unwrap(), f32::datum_type()), &[x, z]).unwrap()[0];
        let batch = model.wire_node("batch", EinSum::new("amk,akn->amn".parse().unwrap(), f32::datum_type()), &[x, w]).unwrap()[0];
        model.select_output_outlets(&[both, batch]).unwrap();
        assert_eq!(fuse_const_linears(&mut model).unwrap(), 0);
    }
}

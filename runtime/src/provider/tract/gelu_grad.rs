//! The adjoint of exact GELU (the MLP's activation, in every score and VJP graph) as one tract
//! op, rewritten in at load.
//!
//! The exporter writes `g * 2 gelu'(x)` (the 1/2 folded into the next product) as
//!
//! ```text
//! s = x * k;  g * ((erf(s) + a) + x * exp(c - s²))      k = 1/sqrt(2), a = 1, c = ln sqrt(2/pi)
//! ```
//!
//! which tract runs as nine passes over the (rows, 4 C) hidden activations, each node writing a
//! tensor the next reads: on the demo's score graph 8 x ~0.5 ms of ~34 ms. [`GeluGrad`] makes
//! one pass in chunks that stay in the L1 cache, with the same arithmetic in the same order and
//! tract's own erf and exp kernels, so it gives the values tract gives.

use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::{Add, Erf, Exp, Mul, Square, Sub};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::pattern::{binary, binary_with, read_only_by, same_f32_shape, scalar, unary};

/// Values per chunk: three chunks of scratch and the inputs' stay in L1.
const CHUNK: usize = 1024;

/// `g * ((erf(x k) + a) + x exp(c - (x k)²))` for f32 x and g of one shape (inputs x, g).
#[derive(Debug, Clone, PartialEq)]
pub struct GeluGrad {
    pub k: f32,
    pub a: f32,
    pub c: f32,
}

impl Eq for GeluGrad {}

impl Op for GeluGrad {
    fn name(&self) -> StaticName {
        "GeluGrad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k {} a {} c {}", self.k, self.a, self.c)])
    }

    op_as_typed_op!();
}

impl EvalOp for GeluGrad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "GeluGrad takes x and g");
        ensure!(
            inputs[0].shape() == inputs[1].shape(),
            "GeluGrad: x {:?} and g {:?} differ in shape",
            inputs[0].shape(),
            inputs[1].shape()
        );
        let (xv, gv) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
        let (x, g) = (xv.as_slice::<f32>()?, gv.as_slice::<f32>()?);
        let (erf, exp) = (Func::Erf.ew_f32()?, Func::Exp.ew_f32()?);
        let out = super::filled(inputs[0].shape(), |o| {
            let mut scratch = vec![0f32; 2 * CHUNK.min(x.len())];
            let (s_buf, q_buf) = scratch.split_at_mut(CHUNK.min(x.len()));
            for ((xc, gc), oc) in x.chunks(CHUNK).zip(g.chunks(CHUNK)).zip(o.chunks_mut(CHUNK)) {
                let (s, q) = (&mut s_buf[..xc.len()], &mut q_buf[..xc.len()]);
                for ((s, q), &x) in s.iter_mut().zip(q.iter_mut()).zip(xc) {
                    *s = x * self.k;
                    *q = self.c - *s * *s;
                }
                erf.run(s)?;
                exp.run(q)?;
                for (((o, &g), &x), (&e, &q)) in oc.iter_mut().zip(gc).zip(xc).zip(s.iter().zip(q.iter())) {
                    *o = g * ((e + self.a) + x * q);
                }
            }
            Ok(())
        })?;
        Ok(tvec!(out))
    }
}

impl TypedOp for GeluGrad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()), "GeluGrad takes two f32 inputs");
        ensure!(inputs[0].shape == inputs[1].shape, "GeluGrad: x {:?} and g {:?} differ in shape", inputs[0].shape, inputs[1].shape);
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned().collect::<TVec<TDim>>())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * 40)))
    }

    as_op!();
}

/// The pattern found at a final `Mul`: its inputs x and g, the op, and the nodes it replaces.
struct Found {
    x: OutletId,
    g: OutletId,
    op: GeluGrad,
}

/// `(erf(x k) + a) + x exp(c - (x k)²)` computed at `sum`: (x, the op's constants, the nodes
/// from s to `sum`).
fn match_derivative(model: &TypedModel, sum: OutletId) -> Option<(OutletId, GeluGrad, Vec<usize>)> {
    let (u, v) = binary::<Add>(model, sum)?;
    [(u, v), (v, u)].into_iter().find_map(|(shifted, tail)| {
        let (erf, a) = binary_with::<Add>(model, shifted, |o| unary::<Erf>(model, o).is_some())?;
        let a = scalar(model, a)?;
        let s = unary::<Erf>(model, erf)?;
        let (x, k) = binary_with::<Mul>(model, s, |o| scalar(model, o).is_none())?;
        let k = scalar(model, k)?;
        let (q, x2) = binary_with::<Mul>(model, tail, |o| unary::<Exp>(model, o).is_some())?;
        let (c, sq) = binary::<Sub>(model, unary::<Exp>(model, q)?)?;
        let c = scalar(model, c)?;
        (unary::<Square>(model, sq)? == s && x2 == x).then(|| {
            let nodes = vec![s.node, erf.node, shifted.node, sq.node, model.node(q.node).inputs[0].node, q.node, tail.node, sum.node];
            (x, GeluGrad { k, a, c }, nodes)
        })
    })
}

/// The pattern whose last `Mul` is node `id`, if it is there as described in the module notes,
/// with nothing outside reading its values.
fn match_gelu_grad(model: &TypedModel, id: usize) -> Option<Found> {
    let root = OutletId::new(id, 0);
    let (p, q) = binary::<Mul>(model, root)?;
    for (g, sum) in [(p, q), (q, p)] {
        let Some((x, op, mut nodes)) = match_derivative(model, sum) else { continue };
        nodes.push(id);
        let private = nodes[..nodes.len() - 1].iter().all(|&n| read_only_by(model, OutletId::new(n, 0), &nodes));
        if private && same_f32_shape(model, x, g) && same_f32_shape(model, x, root) {
            return Some(Found { x, g, op });
        }
    }
    None
}

/// `model` with every GELU adjoint of the exporter's form computed by one [`GeluGrad`] node.
/// Returns how many were replaced.
pub fn fuse_gelu_grads(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(found) = match_gelu_grad(model, id) else { continue };
        let name = model.node(id).name.clone();
        super::substitute(model, OutletId::new(id, 0), &[found.x, found.g], |patch, taps| {
            Ok(patch.wire_node(format!("{name}.gelu_grad"), found.op, taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
    use tract_onnx::tract_core::ops::math;

    const K: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// ln sqrt(2/pi), as the exporter writes it.
    const C: f32 = -0.225_791_4;

    /// The adjoint as tract's declutter leaves the exporter's graph, over x and g of `shape`;
    /// `leak` also makes erf(s) + 1 an output (read outside the pattern).
    fn adjoint_model(shape: &[usize], leak: bool) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let g = m.add_source("g", f32::fact(shape)).unwrap();
        let ones = vec![1usize; shape.len()];
        let konst = |m: &mut TypedModel, name: &str, v: f32| m.add_const(name, Tensor::from_shape(&ones, &[v]).unwrap()).unwrap();
        let (k, one, c) = (konst(&mut m, "k", K), konst(&mut m, "one", 1.0), konst(&mut m, "c", C));
        let bin = |m: &mut TypedModel, name: &str, op: Box<dyn tract_onnx::tract_core::ops::binary::BinMiniOp>, a, b| {
            m.wire_node(name, TypedBinOp(op, None), &[a, b]).unwrap()[0]
        };
        let un = |m: &mut TypedModel, name: &str, op: Box<dyn tract_onnx::tract_core::ops::element_wise::ElementWiseMiniOp>, a| {
            m.wire_node(name, ElementWiseOp(op, None), &[a]).unwrap()[0]
        };
        let s = bin(&mut m, "s", Box::new(math::Mul), x, k);
        let e = un(&mut m, "erf", Box::new(math::Erf {}), s);
        let shifted = bin(&mut m, "shifted", Box::new(math::Add), e, one);
        let sq = un(&mut m, "sq", Box::new(math::Square {}), s);
        let arg = bin(&mut m, "arg", Box::new(math::Sub), c, sq);
        let ex = un(&mut m, "exp", Box::new(math::Exp {}), arg);
        let tail = bin(&mut m, "tail", Box::new(math::Mul), x, ex);
        let sum = bin(&mut m, "sum", Box::new(math::Add), shifted, tail);
        let y = bin(&mut m, "y", Box::new(math::Mul), g, sum);
        let outs = if leak { vec![y, shifted] } else { vec![y] };
        m.select_output_outlets(&outs).unwrap();
        m
    }

    /// The fused op gives tract's own values (its kernels, the same order of operations) and
    /// 2 gelu'(x) g to the precision of tract's erf, over 5,000 values (chunks and a tail).
    #[test]
    fn fused_adjoint_matches_tract_and_the_closed_form() {
        let shape = [5, 1000];
        let x: Vec<f32> = (0..5000).map(|i| ((i * 7919 % 5000) as f32) / 500.0 - 5.0).collect();
        let g = super::super::test_values(5000, 3);
        let plain = adjoint_model(&shape, false);
        let mut fused = plain.clone();
        assert_eq!(fuse_gelu_grads(&mut fused).unwrap(), 1);
        assert!(fused.nodes.iter().all(|n| !n.op_is::<ElementWiseOp>()), "the erf and exp nodes are still there");
        let inputs = [(shape.to_vec(), x.clone()), (shape.to_vec(), g.clone())];
        let want = super::super::test_run(plain, &inputs);
        let got = super::super::test_run(fused, &inputs);
        super::super::test_assert_close(&got, &want, 1e-6, "GeluGrad against tract");
        for (i, (&xi, &gi)) in x.iter().zip(&g).enumerate() {
            let xd = xi as f64;
            let phi = (-xd * xd / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let cdf = 0.5 * (1.0 + erf64(xd / std::f64::consts::SQRT_2));
            let exact = gi as f64 * 2.0 * (cdf + xd * phi);
            assert!((got[i] as f64 - exact).abs() <= 2e-6 * exact.abs().max(1.0), "at x = {xi}: {} vs {exact}", got[i]);
        }
    }

    /// A pattern whose inner value is read elsewhere stays tract's.
    #[test]
    fn adjoints_whose_values_are_read_elsewhere_are_left_alone() {
        let mut leaky = adjoint_model(&[2, 3], true);
        assert_eq!(fuse_gelu_grads(&mut leaky).unwrap(), 0);
    }

    /// erf in f64 (Abramowitz and Stegun 7.1.28 is too coarse; a series and a continued
    /// fraction are exact to ~1e-15 in their ranges).
    fn erf64(x: f64) -> f64 {
        let (sign, z) = (x.signum(), x.abs());
        if z < 3.0 {
            // Maclaurin series: 2/sqrt(pi) sum (-1)^n z^(2n+1) / (n! (2n+1)).
            let (mut term, mut sum, mut n) = (z, z, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -z * z / n;
                sum += term / (2.0 * n + 1.0);
            }
            sign * sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc by its continued fraction (Lentz), for z >= 3.
            let mut f = z;
            for k in (1..60).rev() {
                f = z + (k as f64 / 2.0) / f;
            }
            sign * (1.0 - (-z * z).exp() / (f * std::f64::consts::PI.sqrt()))
        }
    }
}

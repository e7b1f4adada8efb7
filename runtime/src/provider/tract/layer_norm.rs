//! LayerNorm and its adjoint, each as one tract op making one pass per row, rewritten in at
//! load.
//!
//! tract declutters ONNX LayerNormalization into nine nodes (a sum, the mean, x - mean, the
//! mean of squares, + eps, rsqrt, the product, the scale, the bias), and the exporter's adjoint
//! (`export/src/ops/layernorm.rs`: with h = dy * scale folded into the product before it,
//! dx = r (h - mean(h) - xhat mean(h xhat))) into nine more; each node writes a tensor the next
//! reads again. On the demo's score graph of 8 images the 16 LayerNorms and their adjoints are
//! ~290 nodes, ~4 ms of ~34. Rows are short (C values), so [`LayerNormRows`] and
//! [`LayerNormGrad`] make each row's sums and values in the cache, with the arithmetic of
//! tract's nodes (sums in another order: within a few ulps).
//!
//! The forward op also gives xhat and r where the adjoint reads them (the exporter's adjoint reads
//! the LayerNorm's own statistics, which tract merges with its normalised values).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::{Add, Mul, Rsqrt, Sub};
use tract_onnx::tract_core::ops::nn::{Reducer, RmsNorm};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::filled;
use super::lanes;
use super::pattern::{
    MeanLast, binary, binary_with, mean_last, per_row_of, read_only_by, reduced_last, row_constant, same_f32_shape, scalar, unary,
};

/// LayerNorm over the last axis of f32 x: `y = (x - mean) r * scale + bias` with
/// `r = 1 / sqrt(mean((x - mean)²) + eps)`; with `stats`, also xhat = (x - mean) r and r (one
/// per row) as outputs 1 and 2.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormRows {
    pub scale: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    pub eps: f32,
    /// 1/C as the graph holds it.
    pub inv_len: f32,
    pub stats: bool,
}

impl Eq for LayerNormRows {}

impl Op for LayerNormRows {
    fn name(&self) -> StaticName {
        "LayerNormRows".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("C {} eps {} statistics {}", self.scale.len(), self.eps, self.stats)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNormRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "LayerNormRows takes x");
        let shape = inputs[0].shape().to_vec();
        let c = self.scale.len();
        ensure!(c > 0 && shape.last() == Some(&c), "LayerNormRows: x of shape {shape:?} for {c} channels");
        let xv = inputs[0].try_as_plain_ram()?;
        let x = xv.as_slice::<f32>()?;
        let mut rows_shape = shape.clone();
        *rows_shape.last_mut().unwrap() = 1;
        // Each row's mean-centred values, and its mean and r for the statistics.
        let mut d = vec![0f32; c];
        let mut means = vec![(0f32, 0f32); if self.stats { x.len() / c } else { 0 }];
        let y = filled(&shape, |y| {
            for (i, (xr, yr)) in x.chunks(c).zip(y.chunks_mut(c)).enumerate() {
                let mean = lanes::sum(xr) * self.inv_len;
                d.iter_mut().zip(xr).for_each(|(d, x)| *d = x - mean);
                let r = (lanes::dot(&d, &d) * self.inv_len + self.eps).sqrt().recip();
                for (((y, d), s), b) in yr.iter_mut().zip(&d).zip(self.scale.iter()).zip(self.bias.iter()) {
                    *y = d * r * s + b;
                }
                if let Some(slot) = means.get_mut(i) {
                    *slot = (mean, r);
                }
            }
            Ok(())
        })?;
        if !self.stats {
            return Ok(tvec!(y));
        }
        // xhat = (x - mean) r again from x and the row's mean: one more pass over rows in the
        // cache, instead of keeping every row's centred values.
        let xhat = filled(&shape, |xhat| {
            for ((xr, or), &(mean, r)) in x.chunks(c).zip(xhat.chunks_mut(c)).zip(&means) {
                or.iter_mut().zip(xr).for_each(|(o, x)| *o = (x - mean) * r);
            }
            Ok(())
        })?;
        let r = filled(&rows_shape, |out| {
            out.iter_mut().zip(&means).for_each(|(o, &(_, r))| *o = r);
            Ok(())
        })?;
        Ok(tvec!(y, xhat, r))
    }
}

impl TypedOp for LayerNormRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "LayerNormRows takes one f32 input");
        let shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let mut facts = tvec!(f32::fact(shape.clone()));
        if self.stats {
            let mut rows = shape.clone();
            if let Some(last) = rows.last_mut() {
                *last = 1.to_dim();
            }
            facts.push(f32::fact(shape));
            facts.push(f32::fact(rows));
        }
        Ok(facts)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * 4)))
    }

    as_op!();
}

/// The adjoint of LayerNorm with respect to its input, from h = dy * scale, xhat and r:
/// `dx = ((h - mean(h)) - xhat mean(h xhat)) r`, means over the last axis taken as
/// `sum * inv_len`, r one value per row (inputs h, xhat, r).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGrad {
    pub inv_len: f32,
}

impl Eq for LayerNormGrad {}

impl Op for LayerNormGrad {
    fn name(&self) -> StaticName {
        "LayerNormGrad".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNormGrad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3, "LayerNormGrad takes h, xhat and r");
        let shape = inputs[0].shape().to_vec();
        ensure!(inputs[1].shape() == shape.as_slice(), "LayerNormGrad: h {shape:?} and xhat {:?} differ", inputs[1].shape());
        let c = *shape.last().context("LayerNormGrad of a scalar")?;
        ensure!(c > 0, "LayerNormGrad: rows of no values, {shape:?}");
        let (hv, xv, rv) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?, inputs[2].try_as_plain_ram()?);
        let (h, xhat, r) = (hv.as_slice::<f32>()?, xv.as_slice::<f32>()?, rv.as_slice::<f32>()?);
        ensure!(r.len() * c == h.len(), "LayerNormGrad: r {:?} is not one value per row of {shape:?}", inputs[2].shape());
        let dx = filled(&shape, |o| {
            for (((hr, xr), &r), or) in h.chunks(c).zip(xhat.chunks(c)).zip(r).zip(o.chunks_mut(c)) {
                let (m1, m2) = (lanes::sum(hr) * self.inv_len, lanes::dot(hr, xr) * self.inv_len);
                for ((o, h), x) in or.iter_mut().zip(hr).zip(xr) {
                    *o = ((h - m1) - x * m2) * r;
                }
            }
            Ok(())
        })?;
        Ok(tvec!(dx))
    }
}

impl TypedOp for LayerNormGrad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3 && inputs.iter().all(|f| f.datum_type == f32::datum_type()), "LayerNormGrad takes three f32 inputs");
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned().collect::<TVec<TDim>>())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * 4)))
    }

    as_op!();
}

/// A LayerNorm found at its last node: its input, the op, and its normalised values (unless
/// they are its output) and r, to be read from the op's outputs 1 and 2 where other nodes read
/// them.
struct ForwardFound {
    x: OutletId,
    op: LayerNormRows,
    xhat: Option<OutletId>,
    r: OutletId,
}

/// `(xhat, scale)` if `outlet` is xhat times a row constant of `c` values.
fn scaled(model: &TypedModel, outlet: OutletId, c: usize) -> Option<(OutletId, Vec<f32>)> {
    let (xhat, scale) = binary_with::<Mul>(model, outlet, |o| row_constant(model, o, c).is_none())?;
    Some((xhat, row_constant(model, scale, c)?))
}

/// Whether the one reader of `outlet` adds a row constant of `c` values to it.
fn biased_after(model: &TypedModel, outlet: OutletId, c: usize) -> bool {
    match model.outlet_successors(outlet) {
        [one] => {
            binary_with::<Add>(model, OutletId::new(one.node, 0), |o| o == outlet).is_some_and(|(_, b)| row_constant(model, b, c).is_some())
        }
        _ => false,
    }
}

/// The affine part of a LayerNorm: `xhat * scale + bias`, and the scaled value when there is
/// one before the bias.
struct Affine {
    xhat: OutletId,
    scale: Vec<f32>,
    bias: Vec<f32>,
    between: Option<OutletId>,
}

/// The affine part of a LayerNorm ending at `y`, with the identity's scale or bias where tract
/// dropped a scale of ones or a bias of zeros (an untrained model's). A `y` that a scale or bias
/// still follows is no end: the LayerNorm is found at the node after it.
fn affine(model: &TypedModel, y: OutletId, c: usize) -> Option<Affine> {
    let (ones, zeros) = (|| vec![1f32; c], || vec![0f32; c]);
    if let Some((before, bias)) = binary_with::<Add>(model, y, |o| row_constant(model, o, c).is_none()) {
        let bias = row_constant(model, bias, c)?;
        return Some(match scaled(model, before, c) {
            Some((xhat, scale)) => Affine { xhat, scale, bias, between: Some(before) },
            None => Affine { xhat: before, scale: ones(), bias, between: None },
        });
    }
    if biased_after(model, y, c) {
        return None;
    }
    if let Some((xhat, scale)) = scaled(model, y, c) {
        return Some(Affine { xhat, scale, bias: zeros(), between: None });
    }
    let scale_after = model.outlet_successors(y).iter().any(|s| scaled(model, OutletId::new(s.node, 0), c).is_some_and(|(x, _)| x == y));
    (!scale_after).then(|| Affine { xhat: y, scale: ones(), bias: zeros(), between: None })
}

/// The LayerNorm ending at node `id` (its bias `Add`, its scale, or its normalisation where
/// tract dropped an identity affine), as tract declutters it (module notes; where nothing else
/// reads its statistics, tract makes the normalisation one `RmsNorm` of x - mean).
fn match_layer_norm(model: &TypedModel, id: usize) -> Option<ForwardFound> {
    let y = OutletId::new(id, 0);
    let c = model.outlet_fact(y).ok()?.shape.last()?.to_i64().ok()? as usize;
    if c == 0 {
        return None;
    }
    let Affine { xhat, scale, bias, between } = affine(model, y, c)?;
    // (x - mean, eps, the nodes from the centred values to xhat, xhat's statistic r if any)
    let (d, eps, normalise, r) = match model.node(xhat.node).op_as::<RmsNorm>() {
        Some(rms) => {
            let rank = model.outlet_fact(xhat).ok()?.rank();
            if rms.axis + 1 != rank {
                return None;
            }
            (model.node(xhat.node).inputs[0], rms.eps.cast_to_scalar::<f32>().ok()?, vec![xhat], None)
        }
        None => {
            let (r, d) = binary_with::<Mul>(model, xhat, |o| unary::<Rsqrt>(model, o).is_some())?;
            let var_eps = unary::<Rsqrt>(model, r)?;
            let (ms, eps) = binary_with::<Add>(model, var_eps, |o| scalar(model, o).is_none())?;
            if reduced_last(model, ms, Reducer::MeanOfSquares)? != d {
                return None;
            }
            (d, scalar(model, eps)?, vec![ms, var_eps, r, xhat], Some(r))
        }
    };
    let (x, mean) = binary::<Sub>(model, d)?;
    // The mean's 1/L is checked against x's last axis, which is y's (C).
    let MeanLast { x: x2, sum, c: inv_len } = mean_last(model, mean)?;
    if x2 != x || !same_f32_shape(model, x, y) {
        return None;
    }
    let mut values = vec![sum, mean, d];
    values.extend(&normalise);
    values.extend(&between);
    let mut nodes: Vec<usize> = values.iter().map(|o| o.node).collect();
    nodes.push(id);
    // The statistics the adjoint reads may be read outside (the op gives them), nothing else.
    let read_outside = |o: OutletId| o != y && !read_only_by(model, o, &nodes);
    let stats = r.is_some_and(|r| read_outside(xhat) || read_outside(r));
    let private = values.iter().filter(|&&o| o != y && (!stats || (o != xhat && Some(o) != r))).all(|&o| read_only_by(model, o, &nodes));
    private.then(|| ForwardFound {
        x,
        op: LayerNormRows { scale: Arc::new(scale), bias: Arc::new(bias), eps, inv_len, stats },
        xhat: if xhat == y { None } else { Some(xhat) },
        r: r.unwrap_or(xhat),
    })
}

/// `model` with every f32 LayerNorm over the last axis (as tract declutters ONNX
/// LayerNormalization) computed by one [`LayerNormRows`] node. Returns how many were replaced.
pub fn fuse_layer_norms(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(found) = match_layer_norm(model, id) else { continue };
        let name = model.node(id).name.clone();
        let mut olds = vec![(OutletId::new(id, 0), 0)];
        if found.op.stats {
            olds.extend(found.xhat.map(|xhat| (xhat, 1)));
            olds.push((found.r, 2));
        }
        super::substitute_outputs(model, &olds, &[found.x], |patch, taps| patch.wire_node(format!("{name}.layer_norm"), found.op, taps))?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The adjoint whose last `Mul` is node `id` (module notes): (h, xhat, r, the op).
fn match_layer_norm_grad(model: &TypedModel, id: usize) -> Option<(OutletId, OutletId, OutletId, LayerNormGrad)> {
    let root = OutletId::new(id, 0);
    let (d, r) = binary_with::<Mul>(model, root, |o| binary::<Sub>(model, o).is_some())?;
    let (t1, t2) = binary::<Sub>(model, d)?;
    let (h, m1) = binary::<Sub>(model, t1)?;
    let mean_h = mean_last(model, m1)?;
    let (m2, xhat) = binary_with::<Mul>(model, t2, |o| mean_last(model, o).is_some())?;
    let mean_hx = mean_last(model, m2)?;
    let hx = mean_hx.x;
    let (_, xhat2) = binary_with::<Mul>(model, hx, |o| o == h)?;
    if mean_h.x != h || xhat2 != xhat || mean_h.c != mean_hx.c {
        return None;
    }
    if !same_f32_shape(model, h, xhat) || !same_f32_shape(model, h, root) || !per_row_of(model, r, h) {
        return None;
    }
    let (s1, s2) = (mean_h.sum, mean_hx.sum);
    let nodes = [s1.node, m1.node, t1.node, hx.node, s2.node, m2.node, t2.node, d.node, id];
    let private = [s1, m1, t1, hx, s2, m2, t2, d].iter().all(|&o| read_only_by(model, o, &nodes));
    private.then_some((h, xhat, r, LayerNormGrad { inv_len: mean_h.c }))
}

/// `model` with every LayerNorm adjoint of the exporter's form computed by one
/// [`LayerNormGrad`] node. Returns how many were replaced.
pub fn fuse_layer_norm_grads(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((h, xhat, r, op)) = match_layer_norm_grad(model, id) else { continue };
        let name = model.node(id).name.clone();
        super::substitute(model, OutletId::new(id, 0), &[h, xhat, r], |patch, taps| {
            Ok(patch.wire_node(format!("{name}.layer_norm_grad"), op, taps)?[0])
        })?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
    use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
    use tract_onnx::tract_core::ops::math;
    use tract_onnx::tract_core::ops::nn::Reduce;

    const EPS: f32 = 1e-6;

    fn bin(m: &mut TypedModel, name: &str, op: Box<dyn BinMiniOp>, a: OutletId, b: OutletId) -> OutletId {
        m.wire_node(name, TypedBinOp(op, None), &[a, b]).unwrap()[0]
    }

    fn konst(m: &mut TypedModel, name: &str, shape: &[usize], v: &[f32]) -> OutletId {
        m.add_const(name, Tensor::from_shape(shape, v).unwrap()).unwrap()
    }

    /// LayerNorm of x (rows of C) as tract declutters ONNX LayerNormalization, and the
    /// exporter's adjoint of it for the incoming h, both outputs: (model, C).
    fn layer_norm_model(rows: usize, c: usize) -> TypedModel {
        layer_norm_model_with(rows, c, false)
    }

    /// [`layer_norm_model`], with the identity's scale (ones) and bias (zeros) if `identity`.
    fn layer_norm_model_with(rows: usize, c: usize, identity: bool) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([rows, c])).unwrap();
        let h = m.add_source("h", f32::fact([rows, c])).unwrap();
        let inv = konst(&mut m, "inv", &[1, 1], &[1.0 / c as f32]);
        let eps = konst(&mut m, "eps", &[1, 1], &[EPS]);
        let scale: Vec<f32> = (0..c).map(|i| if identity { 1.0 } else { 0.5 + i as f32 / c as f32 }).collect();
        let bias: Vec<f32> = (0..c).map(|i| if identity { 0.0 } else { (i as f32 - 3.0) / 10.0 }).collect();
        let (scale, bias) = (konst(&mut m, "scale", &[1, c], &scale), konst(&mut m, "bias", &[1, c], &bias));
        let sum = m.wire_node("sum", Reduce::new(tvec![1], Reducer::Sum), &[x]).unwrap()[0];
        let mean = bin(&mut m, "mean", Box::new(math::Mul), sum, inv);
        let d = bin(&mut m, "d", Box::new(math::Sub), x, mean);
        let ms = m.wire_node("ms", Reduce::new(tvec![1], Reducer::MeanOfSquares), &[d]).unwrap()[0];
        let var = bin(&mut m, "var", Box::new(math::Add), ms, eps);
        let r = m.wire_node("r", ElementWiseOp(Box::new(math::Rsqrt {}), None), &[var]).unwrap()[0];
        let xhat = bin(&mut m, "xhat", Box::new(math::Mul), d, r);
        let scaled = bin(&mut m, "scaled", Box::new(math::Mul), xhat, scale);
        let y = bin(&mut m, "y", Box::new(math::Add), scaled, bias);
        // dx = ((h - mean(h)) - xhat mean(h xhat)) r
        let sh = m.wire_node("sh", Reduce::new(tvec![1], Reducer::Sum), &[h]).unwrap()[0];
        let inv2 = konst(&mut m, "inv2", &[1, 1], &[1.0 / c as f32]);
        let mh = bin(&mut m, "mh", Box::new(math::Mul), sh, inv2);
        let t1 = bin(&mut m, "t1", Box::new(math::Sub), h, mh);
        let hx = bin(&mut m, "hx", Box::new(math::Mul), h, xhat);
        let shx = m.wire_node("shx", Reduce::new(tvec![1], Reducer::Sum), &[hx]).unwrap()[0];
        let inv3 = konst(&mut m, "inv3", &[1, 1], &[1.0 / c as f32]);
        let mhx = bin(&mut m, "mhx", Box::new(math::Mul), shx, inv3);
        let t2 = bin(&mut m, "t2", Box::new(math::Mul), xhat, mhx);
        let dd = bin(&mut m, "dd", Box::new(math::Sub), t1, t2);
        let dx = bin(&mut m, "dx", Box::new(math::Mul), dd, r);
        m.select_output_outlets(&[y, dx]).unwrap();
        m
    }

    fn run_both(model: TypedModel, feeds: &[(Vec<usize>, Vec<f32>)]) -> Vec<Vec<f32>> {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let inputs = feeds.iter().map(|(s, v)| Tensor::from_shape(s, v).unwrap().into_tvalue()).collect();
        plan.run(inputs).unwrap().iter().map(|t| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect()).collect()
    }

    /// Both ops replace their nine nodes and give tract's values, and LayerNorm and its
    /// adjoint computed in f64 (rows of 37: lanes and a tail).
    #[test]
    fn fused_layer_norm_and_adjoint_match_tract_and_f64() {
        let (rows, c) = (5, 37);
        let x: Vec<f32> = super::super::test_values(rows * c, 2).iter().map(|v| v * 3.0 + 0.7).collect();
        let h = super::super::test_values(rows * c, 9);
        let plain = layer_norm_model(rows, c);
        let mut fused = plain.clone();
        assert_eq!(fuse_layer_norm_grads(&mut fused).unwrap(), 1);
        assert_eq!(fuse_layer_norms(&mut fused).unwrap(), 1);
        let fused = fused.into_decluttered().unwrap();
        assert!(fused.nodes.iter().all(|n| !n.op_is::<Reduce>()), "a sum is still there");
        let feeds = [(vec![rows, c], x.clone()), (vec![rows, c], h.clone())];
        let (want, got) = (run_both(plain, &feeds), run_both(fused, &feeds));
        super::super::test_assert_close(&got[0], &want[0], 1e-6, "LayerNorm against tract");
        super::super::test_assert_close(&got[1], &want[1], 1e-5, "its adjoint against tract");
        for r in 0..rows {
            let xr: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
            let hr: Vec<f64> = h[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
            let mean = xr.iter().sum::<f64>() / c as f64;
            let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rs = 1.0 / (var + EPS as f64).sqrt();
            let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rs).collect();
            let mh = hr.iter().sum::<f64>() / c as f64;
            let mhx = hr.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
            for j in 0..c {
                let y = xhat[j] * (0.5 + j as f64 / c as f64) + (j as f64 - 3.0) / 10.0;
                let dx = (hr[j] - mh - xhat[j] * mhx) * rs;
                assert!((got[0][r * c + j] as f64 - y).abs() < 1e-5, "y[{r}, {j}]: {} vs {y}", got[0][r * c + j]);
                assert!((got[1][r * c + j] as f64 - dx).abs() < 1e-4 * dx.abs().max(1.0), "dx[{r}, {j}]: {} vs {dx}", got[1][r * c + j]);
            }
        }
    }

    /// A LayerNorm alone (nothing reads its statistics: tract makes it an RmsNorm of x - mean)
    /// gives y only, tract's values; one whose centred values are read elsewhere stays tract's.
    #[test]
    fn statistics_are_output_only_when_read_and_shared_values_stay() {
        let mut alone = layer_norm_model(3, 20);
        let y = alone.output_outlets().unwrap()[0];
        alone.select_output_outlets(&[y]).unwrap();
        let plain = alone.into_decluttered().unwrap();
        let mut alone = plain.clone();
        assert_eq!(fuse_layer_norms(&mut alone).unwrap(), 1);
        let op = alone.nodes.iter().find_map(|n| n.op_as::<LayerNormRows>()).unwrap();
        assert!(!op.stats);
        let feeds = [(vec![3, 20], super::super::test_values(60, 4)), (vec![3, 20], super::super::test_values(60, 1))];
        let (want, got) = (run_both(plain, &feeds), run_both(alone, &feeds));
        super::super::test_assert_close(&got[0], &want[0], 1e-6, "LayerNorm (tract's RmsNorm form) against tract");
        let mut shared = layer_norm_model(2, 8);
        let d = shared.node_by_name("d").unwrap().id;
        let mut outs = shared.output_outlets().unwrap().to_vec();
        outs.push(OutletId::new(d, 0));
        shared.select_output_outlets(&outs).unwrap();
        assert_eq!(fuse_layer_norms(&mut shared).unwrap(), 0);
    }

    /// An untrained model's LayerNorm (scale of ones, bias of zeros, which tract drops), with
    /// its adjoint reading its statistics and alone: one op each, tract's values.
    #[test]
    fn layer_norms_without_their_affine_are_fused_too() {
        let (rows, c) = (4, 24);
        let feeds = [(vec![rows, c], super::super::test_values(rows * c, 3)), (vec![rows, c], super::super::test_values(rows * c, 8))];
        let plain = layer_norm_model_with(rows, c, true).into_decluttered().unwrap();
        let mut fused = plain.clone();
        assert_eq!(fuse_layer_norm_grads(&mut fused).unwrap(), 1);
        assert_eq!(fuse_layer_norms(&mut fused).unwrap(), 1);
        let (want, got) = (run_both(plain, &feeds), run_both(fused, &feeds));
        super::super::test_assert_close(&got[0], &want[0], 1e-6, "identity-affine LayerNorm");
        super::super::test_assert_close(&got[1], &want[1], 1e-5, "its adjoint");
        let mut alone = layer_norm_model_with(rows, c, true);
        let y = alone.output_outlets().unwrap()[0];
        alone.select_output_outlets(&[y]).unwrap();
        let plain = alone.into_decluttered().unwrap();
        let mut fused = plain.clone();
        assert_eq!(fuse_layer_norms(&mut fused).unwrap(), 1);
        let (want, got) = (run_both(plain, &feeds), run_both(fused, &feeds));
        super::super::test_assert_close(&got[0], &want[0], 1e-6, "identity-affine LayerNorm alone");
    }
}

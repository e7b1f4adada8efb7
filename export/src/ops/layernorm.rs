//! LayerNormalization over the last axis with scale and bias (ONNX opset 17).
//!
//! Adjoint with respect to x (scale and bias are weights, not differentiated): with
//! xhat = (x - mean) * r, r = 1 / sqrt(var + eps) and h = dy * scale,
//! dx = r * (h - mean(h) - xhat * mean(h * xhat)), means over the last axis.

use super::Op;
use super::elementwise::Un;
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let x = g.shape(inputs[0]);
    let width = x.last().ok_or("LayerNormalization of a scalar")?;
    for &p in &inputs[1..] {
        if g.shape(p).as_slice() != std::slice::from_ref(width) {
            return Err(format!("scale and bias must be [{width}] for an input {}, got {}", super::show(x), super::show(g.shape(p))));
        }
    }
    Ok((super::same_dtype(g, inputs)?, x.clone()))
}

pub fn lower(eps: f32, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    lw.node("LayerNormalization", &node.name, &ins, &out, vec![Lowering::attr_int("axis", -1), Lowering::attr_float("epsilon", eps)]);
}

impl Graph {
    pub fn layer_norm(&mut self, x: V, scale: V, bias: V, eps: f32) -> V {
        self.add(Op::LayerNorm(eps), &[x, scale, bias])
    }
}

pub fn vjp(eps: f32, g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    assert!(!wants[1] && !wants[2], "LayerNorm's scale and bias are weights and are not differentiated");
    let (x, scale) = (node.inputs[0], node.inputs[1]);
    let last = g.rank(x) - 1;
    let mu = g.mean(x, &[last]);
    let xc = g.minus(x, mu);
    let sq = g.times(xc, xc);
    let var = g.mean(sq, &[last]);
    let ve = g.shift(var, eps);
    let sd = g.unary(Un::Sqrt, ve);
    let xhat = g.divide(xc, sd);
    let h = g.times(gy, scale);
    let mh = g.mean(h, &[last]);
    let hx = g.times(h, xhat);
    let mhx = g.mean(hx, &[last]);
    let t1 = g.minus(h, mh);
    let t2 = g.times(xhat, mhx);
    let d = g.minus(t1, t2);
    vec![Some(g.divide(d, sd)), None, None]
}

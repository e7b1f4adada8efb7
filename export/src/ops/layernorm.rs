//! LayerNormalization over the last axis with scale and bias (ONNX opset 17).
//!
//! Adjoint with respect to x (scale and bias are weights, not differentiated): with
//! xhat = (x - mean) * r, r = 1 / sqrt(var + eps) and h = dy * scale,
//! dx = r * (h - mean(h) - xhat * mean(h * xhat)), means over the last axis.
//!
//! The adjoint reads the mean and r from the forward LayerNorm itself ([`Stat`], ONNX's
//! optional outputs Mean and InvStdDev of the same node) instead of computing them again: five
//! passes over x fewer per LayerNorm in every score and VJP graph.

use super::Op;
use crate::ir::{DType, Dim, Graph, Node, Shape, V};
use crate::onnx::Lowering;

/// A statistic of a LayerNorm's input that its ONNX node can also output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Mean,
    InvStdDev,
}

impl Stat {
    pub fn name(self) -> &'static str {
        match self {
            Stat::Mean => "LayerNormMean",
            Stat::InvStdDev => "LayerNormInvStdDev",
        }
    }

    /// The ONNX output index of the statistic on LayerNormalization.
    fn output(self) -> usize {
        match self {
            Stat::Mean => 1,
            Stat::InvStdDev => 2,
        }
    }
}

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

/// A statistic's input must be a LayerNorm's output: fp32 (ONNX's default stash type), of its
/// shape with the last axis 1.
pub fn infer_stat(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let y = inputs[0];
    if !matches!(g.producer(y).op, Op::LayerNorm(_)) {
        return Err(format!("a LayerNorm statistic reads a LayerNorm's output, not {}", g.value(y).name));
    }
    let mut shape = g.shape(y).clone();
    if let Some(last) = shape.last_mut() {
        *last = Dim::N(1);
    }
    Ok((DType::F32, shape))
}

/// One LayerNormalization node whose optional outputs are the statistics read from it.
pub fn lower(eps: f32, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let mut outs = vec![lw.name(node.output)];
    for n in lw.graph().nodes.iter() {
        if let Op::LayerNormStat(stat) = n.op
            && n.inputs[0] == node.output
        {
            let k = stat.output();
            if outs.len() <= k {
                outs.resize(k + 1, String::new());
            }
            outs[k] = lw.name(n.output);
        }
    }
    lw.node_outputs(
        "LayerNormalization",
        &node.name,
        &ins,
        &outs,
        vec![Lowering::attr_int("axis", -1), Lowering::attr_float("epsilon", eps)],
    );
}

impl Graph {
    pub fn layer_norm(&mut self, x: V, scale: V, bias: V, eps: f32) -> V {
        self.add(Op::LayerNorm(eps), &[x, scale, bias])
    }
}

pub fn vjp(g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    assert!(!wants[1] && !wants[2], "LayerNorm's scale and bias are weights and are not differentiated");
    let (x, scale) = (node.inputs[0], node.inputs[1]);
    let last = g.rank(x) - 1;
    // The statistics are fp32 (the stash type) whatever x's type.
    let mu = g.add(Op::LayerNormStat(Stat::Mean), &[node.output]);
    let mu = g.cast(mu, g.dtype(x));
    let r = g.add(Op::LayerNormStat(Stat::InvStdDev), &[node.output]);
    let r = g.cast(r, g.dtype(x));
    let xc = g.minus(x, mu);
    let xhat = g.times(xc, r);
    // A product of the adjoint's matrix by a constant, which the `scales` pass folds.
    let h = g.times(gy, scale);
    let mh = g.mean(h, &[last]);
    let hx = g.times(h, xhat);
    let mhx = g.mean(hx, &[last]);
    let t1 = g.minus(h, mh);
    let t2 = g.times(xhat, mhx);
    let d = g.minus(t1, t2);
    vec![Some(g.times(d, r)), None, None]
}

/// The statistics are read by adjoints only, never differentiated themselves.
pub fn vjp_stat(wants: &[bool]) -> Vec<Option<V>> {
    assert!(!wants[0], "a LayerNorm statistic is not differentiated");
    vec![None]
}

//! Softmax along one axis.
//!
//! Adjoint: dx = y * (dy - sum(dy * y, axis)).

use super::Op;
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    Ok((g.dtype(inputs[0]), g.shape(inputs[0]).clone()))
}

pub fn lower(axis: usize, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    lw.node("Softmax", &node.name, &ins, &out, vec![Lowering::attr_int("axis", axis as i64)]);
}

impl Graph {
    pub fn softmax(&mut self, x: V, axis: usize) -> V {
        self.add(Op::Softmax(axis), &[x])
    }
}

pub fn vjp(axis: usize, g: &mut Graph, node: &Node, gy: V) -> Vec<Option<V>> {
    let y = node.output;
    let gyy = g.times(gy, y);
    let s = g.sum(gyy, &[axis]);
    let d = g.minus(gy, s);
    vec![Some(g.times(y, d))]
}

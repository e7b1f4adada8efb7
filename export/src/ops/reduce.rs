//! Sum and mean over axes (kept as size 1).
//!
//! Adjoint: the output gradient broadcast back to the input's shape (Expand), divided by the
//! element count for the mean.

use super::Op;
use crate::ir::{DType, Dim, Graph, Node, Shape, V};
use crate::onnx::Lowering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Red {
    Sum,
    Mean,
}

impl Red {
    pub fn onnx(self) -> &'static str {
        match self {
            Red::Sum => "ReduceSum",
            Red::Mean => "ReduceMean",
        }
    }
}

pub fn infer(g: &Graph, inputs: &[V], axes: &[usize]) -> Result<(DType, Shape), String> {
    let mut s = g.shape(inputs[0]).clone();
    for &a in axes {
        if a >= s.len() {
            return Err(format!("axis {a} of a rank-{} tensor", s.len()));
        }
        s[a] = Dim::N(1);
    }
    Ok((g.dtype(inputs[0]), s))
}

pub fn lower(op: &Op, node: &Node, lw: &mut Lowering) {
    let Op::Reduce { kind, axes } = op else { unreachable!() };
    let axes = lw.const_i64(&axes.iter().map(|&a| a as i64).collect::<Vec<_>>());
    let x = lw.name(node.inputs[0]);
    let out = lw.name(node.output);
    lw.node(kind.onnx(), &node.name, &[x, axes], &out, vec![Lowering::attr_int("keepdims", 1)]);
}

impl Graph {
    pub fn reduce(&mut self, kind: Red, x: V, axes: &[usize]) -> V {
        self.add(Op::Reduce { kind, axes: axes.to_vec() }, &[x])
    }
    pub fn sum(&mut self, x: V, axes: &[usize]) -> V {
        self.reduce(Red::Sum, x, axes)
    }
    pub fn mean(&mut self, x: V, axes: &[usize]) -> V {
        self.reduce(Red::Mean, x, axes)
    }
}

pub fn vjp(op: &Op, g: &mut Graph, node: &Node, gy: V) -> Vec<Option<V>> {
    let Op::Reduce { kind, axes } = op else { unreachable!() };
    let x = node.inputs[0];
    let mut gx = g.add(Op::Expand, &[gy, x]);
    if *kind == Red::Mean {
        let count: usize = axes.iter().map(|&a| g.shape(x)[a].known().expect("a mean's reduced axes have known sizes")).product();
        gx = g.scale(gx, 1.0 / count as f32);
    }
    vec![Some(gx)]
}

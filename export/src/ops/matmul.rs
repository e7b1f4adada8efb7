//! Matrix product with numpy batching: [..., m, k] @ [..., k, n] -> [..., m, n].
//!
//! Adjoint: dA = dY @ B^T, dB = A^T @ dY, each summed back over broadcast batch axes.

use super::{Op, broadcast, unbroadcast};
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(g: &Graph, inputs: &[V]) -> (DType, Shape) {
    let (a, b) = (g.shape(inputs[0]), g.shape(inputs[1]));
    assert!(a.len() >= 2 && b.len() >= 2, "MatMul needs rank >= 2 operands, got {a:?} and {b:?}");
    let mut out = broadcast(&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec());
    out.push(a[a.len() - 2].clone());
    out.push(b[b.len() - 1].clone());
    (g.dtype(inputs[0]), out)
}

pub fn lower(node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    lw.node("MatMul", &node.name, &ins, &out, vec![]);
}

impl Graph {
    pub fn matmul(&mut self, a: V, b: V) -> V {
        self.add(Op::MatMul, &[a, b])
    }

    /// Swaps the last two axes.
    pub fn transpose_last(&mut self, x: V) -> V {
        let r = self.rank(x);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        self.transpose(x, perm)
    }

    /// x @ W + b for a weight W (in, out) and bias b (out).
    pub fn linear(&mut self, x: V, w: V, b: V) -> V {
        let y = self.matmul(x, w);
        self.plus(y, b)
    }
}

pub fn vjp(g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let ga = wants[0].then(|| {
        let bt = g.transpose_last(b);
        let d = g.matmul(gy, bt);
        unbroadcast(g, d, a)
    });
    let gb = wants[1].then(|| {
        let at = g.transpose_last(a);
        let d = g.matmul(at, gy);
        unbroadcast(g, d, b)
    });
    vec![ga, gb]
}

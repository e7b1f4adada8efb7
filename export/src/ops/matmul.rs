//! Matrix product with numpy batching: [..., m, k] @ [..., k, n] -> [..., m, n].
//!
//! Adjoint: dA = dY @ B^T, dB = A^T @ dY, each summed back over broadcast batch axes.

use super::{Op, broadcast_checked, same_dtype, show, unbroadcast};
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let (a, b) = (g.shape(inputs[0]), g.shape(inputs[1]));
    if a.len() < 2 || b.len() < 2 {
        return Err(format!("MatMul needs operands of rank >= 2, got {} and {}", show(a), show(b)));
    }
    let dtype = same_dtype(g, inputs)?;
    let (k1, k2) = (&a[a.len() - 1], &b[b.len() - 2]);
    if let (Some(x), Some(y)) = (k1.known(), k2.known())
        && x != y
    {
        return Err(format!("inner dimensions differ: {} @ {}", show(a), show(b)));
    }
    let mut out = broadcast_checked(&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec())?;
    out.push(a[a.len() - 2].clone());
    out.push(b[b.len() - 1].clone());
    Ok((dtype, out))
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

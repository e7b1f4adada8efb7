//! Attention over whole sequences, O = softmax(q kt + mask) v, as one IR op lowered to the four
//! ONNX nodes (MatMul, Add, Softmax, MatMul) that every engine fuses or runs as it likes.
//!
//! It is one op so that its adjoint can use the identity of flash attention's backward pass:
//! with P = softmax(S) and O = P v, the softmax adjoint's row sums sum_j P_ij dP_ij (dP = dO v^T)
//! equal sum_c dO_ic O_ic, a reduction over the head dimension instead of over the keys. With
//! dS = P * (dP - rowsum(dO * O)):
//! dq = dS kt^T, dkt = q^T dS, dv = P^T dO (the mask is a constant, not differentiated).
//! Two passes over the (T, S) probability matrices fewer than the ops' own adjoints make, per
//! attention, in every score graph. The probabilities are read from the forward's Softmax
//! ([`Op::AttentionProbs`], like LayerNorm's statistics).

use super::{Op, matmul, show};
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

/// Inputs q (.., T, d), kt (.., d, S), v (.., S, e) and an additive mask broadcasting to
/// (.., T, S); output (.., T, e).
pub fn infer(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let (q, kt, v, mask) = (inputs[0], inputs[1], inputs[2], inputs[3]);
    let (_, scores) = matmul::infer(g, &[q, kt])?;
    if super::broadcast_checked(&scores, g.shape(mask))? != scores {
        return Err(format!("the mask {} widens the scores {}", show(g.shape(mask)), show(&scores)));
    }
    if g.dtype(mask) != g.dtype(q) {
        return Err(format!("mask of dtype {} for scores of dtype {}", g.dtype(mask).name(), g.dtype(q).name()));
    }
    let (s, rows) = (&scores[scores.len() - 1], g.shape(v));
    if rows.len() < 2 || rows[rows.len() - 2].known().zip(s.known()).is_some_and(|(a, b)| a != b) {
        return Err(format!("values {} for {} keys", show(rows), s));
    }
    let mut out = super::broadcast_checked(&scores[..scores.len() - 2].to_vec(), &rows[..rows.len() - 2].to_vec())?;
    out.push(scores[scores.len() - 2].clone());
    out.push(rows[rows.len() - 1].clone());
    Ok((super::same_dtype(g, &[q, kt, v])?, out))
}

/// The probabilities P (.., T, S) of an attention, given its output.
pub fn infer_probs(g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let o = inputs[0];
    let node = g.producer(o);
    if node.op != Op::Attention {
        return Err(format!("attention probabilities read an attention's output, not {}", g.value(o).name));
    }
    let (dtype, scores) = matmul::infer(g, &node.inputs[..2])?;
    Ok((dtype, scores))
}

pub fn lower(node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    let probs = lw.graph().nodes.iter().find(|n| n.op == Op::AttentionProbs && n.inputs[0] == node.output).map(|n| n.output);
    let probs = match probs {
        Some(p) => lw.name(p),
        None => format!("{}.probs", node.name),
    };
    let (scores, masked) = (format!("{}.scores", node.name), format!("{}.masked", node.name));
    let axis = lw.rank(node.output) as i64 - 1;
    lw.node("MatMul", &format!("{}.qk", node.name), &ins[..2], &scores, vec![]);
    lw.node("Add", &format!("{}.mask", node.name), &[scores, ins[3].clone()], &masked, vec![]);
    lw.node("Softmax", &format!("{}.softmax", node.name), &[masked], &probs, vec![Lowering::attr_int("axis", axis)]);
    lw.node("MatMul", &format!("{}.pv", node.name), &[probs, ins[2].clone()], &out, vec![]);
}

impl Graph {
    /// softmax(q kt + mask) v, the softmax over the last axis.
    pub fn attention(&mut self, q: V, kt: V, v: V, mask: V) -> V {
        self.add(Op::Attention, &[q, kt, v, mask])
    }
}

pub fn vjp(g: &mut Graph, node: &Node, d_out: V, wants: &[bool]) -> Vec<Option<V>> {
    assert!(!wants[3], "an attention's mask is a constant and is not differentiated");
    let (q, kt, v) = (node.inputs[0], node.inputs[1], node.inputs[2]);
    let out = node.output;
    let p = g.add(Op::AttentionProbs, &[out]);
    let last = g.rank(out) - 1;
    let dv = wants[2].then(|| {
        let pt = g.transpose_last(p);
        let d = g.matmul(pt, d_out);
        super::unbroadcast(g, d, v)
    });
    let (dq, dkt) = if wants[0] || wants[1] {
        let vt = g.transpose_last(v);
        let dp = g.matmul(d_out, vt);
        let od = g.times(d_out, out);
        let rows = g.sum(od, &[last]);
        let centred = g.minus(dp, rows);
        let ds = g.times(p, centred);
        let dq = wants[0].then(|| {
            let k = g.transpose_last(kt);
            let d = g.matmul(ds, k);
            super::unbroadcast(g, d, q)
        });
        let dkt = wants[1].then(|| {
            let qt = g.transpose_last(q);
            let d = g.matmul(qt, ds);
            super::unbroadcast(g, d, kt)
        });
        (dq, dkt)
    } else {
        (None, None)
    };
    vec![dq, dkt, dv, None]
}

/// The probabilities are read by the attention's adjoint only, never differentiated.
pub fn vjp_probs(wants: &[bool]) -> Vec<Option<V>> {
    assert!(!wants[0], "attention probabilities are not differentiated");
    vec![None]
}

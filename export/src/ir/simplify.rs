//! Graph clean-up before lowering: dead-node removal and folding of constant subgraphs that the
//! builder or the gradient pass produced (so no runtime sees a needless broadcast or shape
//! computation on constants).

use std::collections::{HashMap, HashSet};

use super::{ConstData, Graph, Op, V};
use crate::ops::{Bin, Un};

/// Removes nodes whose outputs no graph output depends on. Graph inputs are kept.
pub fn remove_dead(g: &mut Graph) {
    let mut live: HashSet<V> = g.outputs.iter().copied().collect();
    let mut keep = vec![false; g.nodes.len()];
    for (k, node) in g.nodes.iter().enumerate().rev() {
        if live.contains(&node.output) || matches!(node.op, Op::Input) {
            keep[k] = true;
            live.extend(node.inputs.iter().copied());
        }
    }
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        keep[k - 1]
    });
}

/// Folds elementwise ops whose inputs are all scalar f32 constants (e.g. 1/count * scale).
pub fn fold_scalars(g: &mut Graph) {
    // Scalar f32 constants by value id, filled in as nodes are visited (and folded) in order.
    let mut scalars: HashMap<V, f32> = HashMap::new();
    for k in 0..g.nodes.len() {
        let node = g.nodes[k].clone();
        if let Op::Const(ConstData::F32(d)) = &node.op
            && d.len() == 1
            && g.shape(node.output).is_empty()
        {
            scalars.insert(node.output, d[0]);
            continue;
        }
        let vals: Option<Vec<f32>> = node.inputs.iter().map(|i| scalars.get(i).copied()).collect();
        let Some(vals) = vals else { continue };
        let folded = match (&node.op, vals.as_slice()) {
            (Op::Binary(b), [x, y]) => Some(match b {
                Bin::Add => x + y,
                Bin::Sub => x - y,
                Bin::Mul => x * y,
                Bin::Div => x / y,
            }),
            (Op::Unary(Un::Neg), [x]) => Some(-x),
            (Op::Unary(Un::Sqrt), [x]) => Some(x.sqrt()),
            _ => None,
        };
        if let Some(v) = folded {
            g.nodes[k].op = Op::Const(ConstData::F32(vec![v]));
            g.nodes[k].inputs.clear();
            scalars.insert(node.output, v);
        }
    }
    remove_dead(g);
}

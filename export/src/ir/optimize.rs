//! Graph optimisation passes, run on every exported graph after differentiation (see
//! [`Passes`]). Each pass rebuilds the graph node by node ([`Graph::rebuild`]) and leaves its
//! outputs unchanged to float rounding (each one has a test that says so on random inputs):
//!
//! - `slice_grads`: the gradient of a value cut into slices that tile an axis (q, k and v of the
//!   attention's qkv; a and b of the flow's output) is the concatenation of the slices'
//!   gradients, not a sum of zero-padded copies (k slices: k Pads and k - 1 Adds -> one Concat);
//! - `negations`: x + (-y) -> x - y, x - (-y) -> x + y, -(-x) -> x (the subtraction adjoints'
//!   negations folded into their consumers);
//! - `transposes`: a Transpose that moves only axes of size 1 is a Reshape (free in every
//!   engine): the single-token attention layouts of the step graphs;
//! - `cse`: common subexpressions (the same op on the same inputs, e.g. a shape or a transpose of
//!   the same weight in the forward and the backward pass) computed once;
//! - `scales`: (x @ W) * c for constants W (or a transpose of one) and c (a scalar, or a vector
//!   along the product's last axis) is x @ (W * c), when nothing else reads x @ W: the
//!   adjoints' LayerNorm scales and GELU's 1/2, a pass over an activation each, become a product
//!   of constants that the engines fold when they load the graph.

use std::collections::HashMap;

use super::{ConstData, Dim, Graph, Node, Op, V};
use crate::ops::{Bin, Un};

/// Which passes run (all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    pub slice_grads: bool,
    pub negations: bool,
    pub transposes: bool,
    pub cse: bool,
    pub scales: bool,
}

impl Default for Passes {
    fn default() -> Self {
        Self::ALL
    }
}

impl Passes {
    pub const ALL: Passes = Passes { slice_grads: true, negations: true, transposes: true, cse: true, scales: true };
    pub const NONE: Passes = Passes { slice_grads: false, negations: false, transposes: false, cse: false, scales: false };

    /// Runs the enabled passes in order.
    pub fn run(&self, g: &Graph) -> Graph {
        let mut g = g.clone();
        if self.slice_grads {
            g = slice_grads(&g);
        }
        if self.negations {
            g = negations(&g);
        }
        if self.transposes {
            g = transposes(&g);
        }
        if self.cse {
            g = cse(&g);
        }
        if self.scales {
            g = scales(&g);
        }
        super::simplify::remove_dead(&mut g);
        g
    }
}

/// The (axis, start, end, inner) of a value that is `inner` zero-padded to cover [start, end) of
/// `axis`.
fn padded(g: &Graph, v: V) -> Option<(usize, usize, usize, V)> {
    let node = g.producer(v);
    match node.op {
        Op::Pad { axis, before, after } => {
            let n = g.shape(v)[axis].known()?;
            Some((axis, before, n - after, node.inputs[0]))
        }
        _ => None,
    }
}

fn slice_grads(g: &Graph) -> Graph {
    g.rebuild(|h, node, ins| {
        if node.op != Op::Binary(Bin::Add) {
            return None;
        }
        let (a, b) = (padded(h, ins[0])?, padded(h, ins[1])?);
        // Adjacent pieces of the same axis, in order.
        let (first, second) = if a.2 == b.1 {
            (a, b)
        } else if b.2 == a.1 {
            (b, a)
        } else {
            return None;
        };
        if first.0 != second.0 || h.shape(ins[0]) != h.shape(ins[1]) {
            return None;
        }
        let axis = first.0;
        let n = h.shape(ins[0])[axis].known()?;
        // Splice the pieces of concatenations this pass made (inputs of an inner Concat).
        let mut pieces = Vec::new();
        for inner in [first.3, second.3] {
            match h.producer(inner) {
                Node { op: Op::Concat(ax), inputs, .. } if *ax == axis => pieces.extend(inputs.iter().copied()),
                _ => pieces.push(inner),
            }
        }
        let joined = h.concat(&pieces, axis);
        let (before, after) = (first.1, n - second.2);
        Some(if before == 0 && after == 0 { joined } else { h.pad(joined, axis, before, after) })
    })
}

fn negations(g: &Graph) -> Graph {
    g.rebuild(|h, node, ins| {
        let negated = |v: V| match h.producer(v) {
            Node { op: Op::Unary(Un::Neg), inputs, .. } => Some(inputs[0]),
            _ => None,
        };
        // Only where the result keeps the Add/Sub's broadcast shape.
        let same = |a: V, b: V| h.shape(a) == h.shape(b);
        match &node.op {
            Op::Binary(Bin::Add) => match (negated(ins[0]), negated(ins[1])) {
                (_, Some(y)) if same(ins[1], y) => Some(h.minus(ins[0], y)),
                (Some(x), _) if same(ins[0], x) => Some(h.minus(ins[1], x)),
                _ => None,
            },
            Op::Binary(Bin::Sub) => negated(ins[1]).filter(|&y| same(ins[1], y)).map(|y| h.plus(ins[0], y)),
            Op::Unary(Un::Neg) => negated(ins[0]),
            _ => None,
        }
    })
}

fn transposes(g: &Graph) -> Graph {
    g.rebuild(|h, node, ins| {
        let Op::Transpose(perm) = &node.op else { return None };
        let x = h.shape(ins[0]).clone();
        // Reshape-equivalent when the axes of size other than 1 keep their order.
        let moved: Vec<usize> = perm.iter().copied().filter(|&p| x[p] != Dim::N(1)).collect();
        if moved.windows(2).any(|w| w[0] > w[1]) {
            return None;
        }
        let out: Vec<Dim> = perm.iter().map(|&p| x[p].clone()).collect();
        let mut target = Vec::with_capacity(out.len());
        let mut inferred = false;
        for (i, d) in out.iter().enumerate() {
            match d {
                Dim::N(n) => target.push(*n as i64),
                Dim::S(_) if x.get(i) == Some(d) => target.push(0),
                Dim::S(_) if !inferred => {
                    inferred = true;
                    target.push(-1);
                }
                Dim::S(_) => return None,
            }
        }
        Some(h.reshape(ins[0], &target))
    })
}

fn cse(g: &Graph) -> Graph {
    let mut seen: HashMap<String, V> = HashMap::new();
    g.rebuild(|h, node, ins| {
        let key = match &node.op {
            Op::Input => return None,
            // Small anonymous constants (named ones are weights and stay as they are).
            Op::Const(data) => {
                let small = match data {
                    ConstData::F32(d) => d.len() <= 16,
                    ConstData::F16(d) => d.len() <= 16,
                    ConstData::I64(d) => d.len() <= 16,
                    ConstData::Bool(d) => d.len() <= 16,
                };
                if !small || !node.name.rsplit('.').next().is_some_and(|n| n.starts_with("const")) {
                    return None;
                }
                format!("{:?}|{:?}", data, g.shape(node.output))
            }
            op => format!("{op:?}|{ins:?}"),
        };
        match seen.get(&key) {
            Some(&v) => Some(v),
            None => {
                let v = h.copy_node(g, node, ins);
                seen.insert(key, v);
                Some(v)
            }
        }
    })
}

/// Whether `v` is a constant or a transpose of one.
fn constant(g: &Graph, v: V) -> bool {
    match &g.producer(v).op {
        Op::Const(ConstData::F32(_) | ConstData::F16(_)) => true,
        Op::Transpose(_) => constant(g, g.producer(v).inputs[0]),
        _ => false,
    }
}

fn scales(g: &Graph) -> Graph {
    let mut readers: HashMap<V, usize> = HashMap::new();
    for node in &g.nodes {
        for &i in &node.inputs {
            *readers.entry(i).or_default() += 1;
        }
    }
    for &o in &g.outputs {
        *readers.entry(o).or_default() += 1;
    }
    g.rebuild(|h, node, ins| {
        if node.op != Op::Binary(Bin::Mul) {
            return None;
        }
        // The product may be either operand.
        let (k, c) = [(0, 1), (1, 0)].into_iter().find(|&(k, c)| {
            let p = h.producer(ins[k]);
            p.op == Op::MatMul && readers.get(&node.inputs[k]) == Some(&1) && constant(h, p.inputs[1]) && constant(h, ins[c])
        })?;
        let (prod, c) = (ins[k], ins[c]);
        let last = h.shape(prod).last().cloned()?;
        let cs = h.shape(c).clone();
        // A scalar, or a vector along the last axis (leading 1s allowed): what broadcasts over W.
        let fits = cs.iter().rev().skip(1).all(|d| *d == Dim::N(1)) && cs.last().is_none_or(|d| *d == last || *d == Dim::N(1));
        if !fits || h.dtype(c) != h.dtype(prod) {
            return None;
        }
        let (x, w) = {
            let p = h.producer(prod);
            (p.inputs[0], p.inputs[1])
        };
        let c = if cs.len() > 1 { h.reshape(c, &[-1]) } else { c };
        let wc = h.times(w, c);
        Some(h.matmul(x, wc))
    })
}

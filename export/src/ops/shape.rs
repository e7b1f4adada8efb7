//! Data movement: reshape, transpose, concat, slice, zero padding, gather and expand. Slices
//! that tile a value along an axis are lowered as one ONNX Split ([`split_groups`]).
//!
//! Adjoints: reshape back to the input's runtime shape; transpose by the inverse permutation;
//! concat -> slices; slice -> zero padding; padding -> slice; gather with constant permutation
//! indices -> gather with the inverse permutation; expand -> sum over the broadcast axes.

use std::collections::{BTreeMap, HashMap};

use super::{Op, show, unbroadcast};
use crate::ir::{ConstData, DType, Dim, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(op: &Op, g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let x = g.shape(inputs[0]);
    let dt = g.dtype(inputs[0]);
    let axis_of = |axis: usize| if axis < x.len() { Ok(axis) } else { Err(format!("axis {axis} of a tensor {}", show(x))) };
    Ok(match op {
        Op::Reshape(target) => {
            let mut out = Vec::with_capacity(target.len());
            for (i, &t) in target.iter().enumerate() {
                out.push(match t {
                    0 => x.get(i).cloned().ok_or_else(|| format!("Reshape copies axis {i} of {}", show(x)))?,
                    -1 => Dim::sym("?"),
                    n if n > 0 => Dim::N(n as usize),
                    n => return Err(format!("Reshape to a size of {n}")),
                });
            }
            let total: Option<usize> = x.iter().map(Dim::known).product();
            let rest: Option<usize> = out.iter().zip(target).filter(|(_, t)| **t != -1).map(|(d, _)| d.known()).product();
            match (target.iter().position(|&t| t == -1), total, rest) {
                // Infer the -1 when every other size is known.
                (Some(pos), Some(t), Some(r)) if r > 0 && t % r == 0 => out[pos] = Dim::N(t / r),
                (Some(_), Some(t), Some(r)) => {
                    return Err(format!("Reshape of {} ({t} values) to {target:?} ({r} values and a -1)", show(x)));
                }
                (None, Some(t), Some(r)) if t != r => {
                    return Err(format!("Reshape of {} ({t} values) to {target:?} ({r} values)", show(x)));
                }
                _ => {}
            }
            (dt, out)
        }
        Op::ReshapeLike => (dt, g.shape(inputs[1]).clone()),
        Op::Expand => (dt, super::broadcast_checked(x, g.shape(inputs[1]))?),
        Op::Transpose(perm) => {
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len() || perm.iter().any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true)) {
                return Err(format!("Transpose {perm:?} of a tensor {}", show(x)));
            }
            (dt, perm.iter().map(|&p| x[p].clone()).collect())
        }
        Op::Concat(axis) => {
            let axis = axis_of(*axis)?;
            super::same_dtype(g, inputs)?;
            for &v in &inputs[1..] {
                let y = g.shape(v);
                let clash = y.len() != x.len() || x.iter().zip(y).enumerate().any(|(i, (a, b))| i != axis && a != b);
                if clash {
                    return Err(format!("Concat along axis {axis} of {} and {}", show(x), show(y)));
                }
            }
            let mut out = x.clone();
            let total: Option<usize> = inputs.iter().map(|&v| g.shape(v)[axis].known()).sum();
            out[axis] = total.map_or(Dim::sym("?"), Dim::N);
            (dt, out)
        }
        Op::Slice { axis, start, end } => {
            let axis = axis_of(*axis)?;
            if start >= end || x[axis].known().is_some_and(|n| *end > n) {
                return Err(format!("Slice [{start}, {end}) of axis {axis} of {}", show(x)));
            }
            let mut out = x.clone();
            out[axis] = Dim::N(end - start);
            (dt, out)
        }
        Op::Pad { axis, before, after } => {
            let axis = axis_of(*axis)?;
            let n = x[axis].known().ok_or_else(|| format!("Pad of the symbolic axis {axis} of {}", show(x)))?;
            let mut out = x.clone();
            out[axis] = Dim::N(n + before + after);
            (dt, out)
        }
        Op::Gather { axis } => {
            let axis = axis_of(*axis)?;
            if g.dtype(inputs[1]) != DType::I64 {
                return Err(format!("Gather indices of dtype {}, not int64", g.dtype(inputs[1]).name()));
            }
            let idx = g.shape(inputs[1]);
            let mut out: Shape = x[..axis].to_vec();
            out.extend(idx.iter().cloned());
            out.extend(x[axis + 1..].iter().cloned());
            (dt, out)
        }
        other => return Err(format!("{} is not a shape op", other.kind())),
    })
}

/// A slice's part in a group of slices of one value along one axis that tile it exactly (each
/// element in one slice): the group is lowered as one ONNX Split, emitted where its first slice
/// (in node order) is, since one kernel on a GPU costs less than one per slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitRole {
    /// The group's first slice: the Split's sizes and outputs, in axis order.
    First { sizes: Vec<i64>, outputs: Vec<V> },
    /// A later slice of a group.
    Later,
}

/// The slices of `g` that are lowered as Splits (see [`SplitRole`]), by their output.
pub fn split_groups(g: &Graph) -> HashMap<V, SplitRole> {
    /// A slice: its range, its output and its place in node order.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Piece {
        start: usize,
        end: usize,
        out: V,
        at: usize,
    }
    let mut groups: BTreeMap<(V, usize), Vec<Piece>> = BTreeMap::new();
    for (at, node) in g.nodes.iter().enumerate() {
        if let Op::Slice { axis, start, end } = node.op {
            groups.entry((node.inputs[0], axis)).or_default().push(Piece { start, end, out: node.output, at });
        }
    }
    let mut roles = HashMap::new();
    for ((x, axis), mut pieces) in groups {
        let first = pieces.iter().min_by_key(|p| p.at).expect("a group has a slice").out;
        pieces.sort();
        let n = g.shape(x)[axis].known();
        let tiles = pieces.len() >= 2
            && pieces[0].start == 0
            && pieces.windows(2).all(|w| w[0].end == w[1].start)
            && n == Some(pieces[pieces.len() - 1].end);
        if !tiles {
            continue;
        }
        let sizes = pieces.iter().map(|p| (p.end - p.start) as i64).collect();
        let outputs: Vec<V> = pieces.iter().map(|p| p.out).collect();
        for &v in &outputs {
            roles.insert(v, SplitRole::Later);
        }
        roles.insert(first, SplitRole::First { sizes, outputs });
    }
    roles
}

pub fn lower(op: &Op, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    let name = &node.name;
    match op {
        Op::Reshape(target) => {
            let shape = lw.const_i64(target);
            lw.node("Reshape", name, &[ins[0].clone(), shape], &out, vec![]);
        }
        Op::ReshapeLike | Op::Expand => {
            let shape = format!("{out}.shape");
            lw.node("Shape", &format!("{name}.shape"), &[ins[1].clone()], &shape, vec![]);
            let kind = if matches!(op, Op::Expand) { "Expand" } else { "Reshape" };
            lw.node(kind, name, &[ins[0].clone(), shape], &out, vec![]);
        }
        Op::Transpose(perm) => {
            let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
            lw.node("Transpose", name, &ins, &out, vec![Lowering::attr_ints("perm", &perm)]);
        }
        Op::Concat(axis) => lw.node("Concat", name, &ins, &out, vec![Lowering::attr_int("axis", *axis as i64)]),
        Op::Slice { axis, start, end } => match lw.split_role(node.output).cloned() {
            None => {
                let s = lw.const_i64(&[*start as i64]);
                let e = lw.const_i64(&[*end as i64]);
                let a = lw.const_i64(&[*axis as i64]);
                lw.node("Slice", name, &[ins[0].clone(), s, e, a], &out, vec![]);
            }
            Some(SplitRole::First { sizes, outputs }) => {
                let outputs = lw.names(&outputs);
                let split = lw.const_i64(&sizes);
                lw.node_outputs("Split", name, &[ins[0].clone(), split], &outputs, vec![Lowering::attr_int("axis", *axis as i64)]);
            }
            // An output of the group's Split, emitted at its first slice.
            Some(SplitRole::Later) => {}
        },
        Op::Pad { axis, before, after } => {
            let rank = lw.rank(node.inputs[0]);
            let mut pads = vec![0i64; 2 * rank];
            pads[*axis] = *before as i64;
            pads[rank + axis] = *after as i64;
            let pads = lw.const_i64(&pads);
            lw.node("Pad", name, &[ins[0].clone(), pads], &out, vec![]);
        }
        Op::Gather { axis } => lw.node("Gather", name, &ins, &out, vec![Lowering::attr_int("axis", *axis as i64)]),
        _ => unreachable!(),
    }
}

impl Graph {
    pub fn reshape(&mut self, x: V, target: &[i64]) -> V {
        self.add(Op::Reshape(target.to_vec()), &[x])
    }
    pub fn transpose(&mut self, x: V, perm: Vec<usize>) -> V {
        self.add(Op::Transpose(perm), &[x])
    }
    pub fn concat(&mut self, xs: &[V], axis: usize) -> V {
        self.add(Op::Concat(axis), xs)
    }
    pub fn slice(&mut self, x: V, axis: usize, start: usize, end: usize) -> V {
        self.add(Op::Slice { axis, start, end }, &[x])
    }
    pub fn pad(&mut self, x: V, axis: usize, before: usize, after: usize) -> V {
        self.add(Op::Pad { axis, before, after }, &[x])
    }
    pub fn gather(&mut self, x: V, indices: V, axis: usize) -> V {
        self.add(Op::Gather { axis }, &[x, indices])
    }
    /// Reverses `axis` (a Gather with reversed indices: tract mis-optimises negative-step slices).
    pub fn flip(&mut self, x: V, axis: usize) -> V {
        let n = self.shape(x)[axis].known().expect("flipped axes have known sizes");
        let idx = self.ints((0..n as i64).rev().collect());
        self.gather(x, idx, axis)
    }
}

pub fn vjp(op: &Op, g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    let x = node.inputs[0];
    match op {
        Op::Reshape(_) | Op::ReshapeLike => {
            let mut out = vec![Some(g.add(Op::ReshapeLike, &[gy, x]))];
            out.resize(node.inputs.len(), None);
            out
        }
        Op::Transpose(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.transpose(gy, inv))]
        }
        Op::Concat(axis) => {
            let mut start = 0;
            node.inputs
                .iter()
                .zip(wants)
                .map(|(&v, &w)| {
                    let n = g.shape(v)[*axis].known().expect("concatenated axes have known sizes");
                    let s = start;
                    start += n;
                    w.then(|| g.slice(gy, *axis, s, s + n))
                })
                .collect()
        }
        Op::Slice { axis, start, end } => {
            let n = g.shape(x)[*axis].known().expect("sliced axes have known sizes");
            vec![Some(g.pad(gy, *axis, *start, n - end))]
        }
        Op::Pad { axis, before, .. } => {
            let n = g.shape(x)[*axis].known().expect("padded axes have known sizes");
            vec![Some(g.slice(gy, *axis, *before, before + n))]
        }
        Op::Gather { axis } => {
            let idx = g.producer(node.inputs[1]).op.clone();
            let Op::Const(ConstData::I64(perm)) = idx else {
                panic!("only gathers with constant indices are differentiated");
            };
            let n = g.shape(x)[*axis].known().expect("gathered axes have known sizes");
            let mut inv = vec![-1i64; n];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            assert!(perm.len() == n && inv.iter().all(|&i| i >= 0), "only permutation gathers are differentiated");
            let idx = g.ints(inv);
            vec![Some(g.gather(gy, idx, *axis)), None]
        }
        Op::Expand => vec![Some(unbroadcast(g, gy, x)), None],
        _ => unreachable!(),
    }
}

#[cfg(test)]
mod tests {
    use super::{SplitRole, split_groups};
    use crate::ir::{DType, Dim, Graph};

    #[test]
    fn only_slices_that_tile_an_axis_become_one_split() {
        let mut g = Graph::new("g");
        let x = g.input("x", DType::F32, vec![Dim::sym("N"), Dim::N(7)]);
        // Tiling [0, 7) out of order: one Split of sizes 2, 3, 2, placed at the first slice made.
        let b = g.slice(x, 1, 2, 5);
        let a = g.slice(x, 1, 0, 2);
        let c = g.slice(x, 1, 5, 7);
        // Along the symbolic axis, with a gap, overlapping, or alone: Slices.
        let y = g.input("y", DType::F32, vec![Dim::N(4), Dim::N(6)]);
        let others = [g.slice(x, 0, 0, 1), g.slice(y, 1, 0, 2), g.slice(y, 1, 3, 6), g.slice(y, 0, 0, 3), g.slice(y, 0, 2, 4)];
        let z = g.input("z", DType::F32, vec![Dim::N(5)]);
        let alone = g.slice(z, 0, 0, 5);
        let roles = split_groups(&g);
        assert_eq!(roles.get(&b), Some(&SplitRole::First { sizes: vec![2, 3, 2], outputs: vec![a, b, c] }));
        assert_eq!((roles.get(&a), roles.get(&c)), (Some(&SplitRole::Later), Some(&SplitRole::Later)));
        for v in others.into_iter().chain([alone]) {
            assert_eq!(roles.get(&v), None, "{v:?}");
        }
        assert_eq!(roles.len(), 3);
    }
}

//! Data movement: reshape, transpose, concat, slice, zero padding, gather and expand.
//!
//! Adjoints: reshape back to the input's runtime shape; transpose by the inverse permutation;
//! concat -> slices; slice -> zero padding; padding -> slice; gather with constant permutation
//! indices -> gather with the inverse permutation; expand -> sum over the broadcast axes.

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
        Op::Slice { axis, start, end } => {
            let s = lw.const_i64(&[*start as i64]);
            let e = lw.const_i64(&[*end as i64]);
            let a = lw.const_i64(&[*axis as i64]);
            lw.node("Slice", name, &[ins[0].clone(), s, e, a], &out, vec![]);
        }
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

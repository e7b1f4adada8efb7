//! Element-indexed data movement: ScatterElements (write `updates` into `data` at `indices`
//! along an axis, replacing or adding) and GatherElements (read `data` at `indices`).
//! The fixed-length KV cache of the TensorRT step graph writes each new key and value with a
//! ScatterElements at the step's position.
//!
//! Adjoints: scatter (replace) -> the data gradient is the output gradient with the written
//! places zeroed (a scatter of zeros), the updates gradient gathers the output gradient at the
//! indices; scatter (add) -> data gets the output gradient unchanged; gather -> a scatter-add of
//! the output gradient into zeros. Indices get no gradient.

use super::Op;
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub fn infer(op: &Op, g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    if g.dtype(inputs[1]) != DType::I64 {
        return Err(format!("indices of dtype {}, not int64", g.dtype(inputs[1]).name()));
    }
    let (data, idx) = (g.shape(inputs[0]), g.shape(inputs[1]));
    if data.len() != idx.len() {
        return Err(format!("data {} and indices {} differ in rank", super::show(data), super::show(idx)));
    }
    Ok(match op {
        // The output has the data's shape.
        Op::ScatterElements { .. } => {
            if g.shape(inputs[2]) != idx {
                return Err(format!("updates {} and indices {} differ in shape", super::show(g.shape(inputs[2])), super::show(idx)));
            }
            (super::same_dtype(g, &[inputs[0], inputs[2]])?, data.clone())
        }
        // The output has the indices' shape.
        Op::GatherElements { .. } => (g.dtype(inputs[0]), idx.clone()),
        other => return Err(format!("{} is not a scatter or gather", other.kind())),
    })
}

pub fn lower(op: &Op, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    match op {
        Op::ScatterElements { axis, add } => {
            let mut attrs = vec![Lowering::attr_int("axis", *axis as i64)];
            if *add {
                attrs.push(Lowering::attr_string("reduction", "add"));
            }
            lw.node("ScatterElements", &node.name, &ins, &out, attrs)
        }
        Op::GatherElements { axis } => lw.node("GatherElements", &node.name, &ins, &out, vec![Lowering::attr_int("axis", *axis as i64)]),
        _ => unreachable!(),
    }
}

impl Graph {
    /// `data` with `updates` written at `indices` along `axis` (indices shaped like updates).
    pub fn scatter_elements(&mut self, data: V, indices: V, updates: V, axis: usize) -> V {
        self.add(Op::ScatterElements { axis, add: false }, &[data, indices, updates])
    }

    /// `data` with `updates` added at `indices` along `axis`.
    pub fn scatter_add(&mut self, data: V, indices: V, updates: V, axis: usize) -> V {
        self.add(Op::ScatterElements { axis, add: true }, &[data, indices, updates])
    }

    /// `data` read at `indices` along `axis`; the output is shaped like `indices`.
    pub fn gather_elements(&mut self, data: V, indices: V, axis: usize) -> V {
        self.add(Op::GatherElements { axis }, &[data, indices])
    }

    /// Zeros shaped (at run time) like `like`, of `like`'s dtype.
    pub fn zeros_like(&mut self, like: V) -> V {
        let zero = self.scalar(0.0);
        let zero = self.cast(zero, self.dtype(like));
        self.add(Op::Expand, &[zero, like])
    }
}

pub fn vjp(op: &Op, g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    match op {
        Op::ScatterElements { axis, add } => {
            let (idx, upd) = (node.inputs[1], node.inputs[2]);
            let gd = wants[0].then(|| {
                if *add {
                    gy
                } else {
                    let zeros = g.zeros_like(upd);
                    g.scatter_elements(gy, idx, zeros, *axis)
                }
            });
            let gu = wants[2].then(|| g.gather_elements(gy, idx, *axis));
            vec![gd, None, gu]
        }
        Op::GatherElements { axis } => {
            let (data, idx) = (node.inputs[0], node.inputs[1]);
            let zeros = g.zeros_like(data);
            vec![Some(g.scatter_add(zeros, idx, gy, *axis)), None]
        }
        _ => unreachable!(),
    }
}

//! The fp16 variant of a graph: weights and activations in half precision, with the
//! exponentials that can overflow kept in fp32 (islands with casts around them: exp(a) of a
//! log-scale a > 11 is past fp16's range). Inputs and outputs stay fp32 so that callers feed
//! both variants alike.
//!
//! Everything else runs on fp16 tensors, with no casts over whole activations:
//! - LayerNormalization computes in fp32 inside by its definition (stash_type 1, the default:
//!   ONNX says the op casts to fp32, normalises, and casts the result back), so an fp32 island
//!   around it only added two casts; its Mean and InvStdDev outputs are fp32 (cast to fp16 for
//!   the adjoint's arithmetic, tensors of one value per row).
//! - Softmax and the reductions: ONNX Runtime (CUDA and CPU) accumulates them in fp32 inside the
//!   kernel and rounds once, the same numbers as an fp32 island. (tract's fp16 reductions round
//!   more: its fp16 errors against Burn grew, within the fp16 tolerance; fp16 is the GPU's
//!   precision, tract's is fp32.)
//! - Exponentials of values <= 0 (the GELU and erf adjoints' exp(-s^2)) cannot overflow.
//!
//! On the s64 score graph these casts were ~20% of all the bytes its kernels move.

use std::collections::HashMap;

use crate::ir::{ConstData, DType, Graph, Node, Op, V};
use crate::ops::{Bin, Un};

/// Whether `node` runs in fp32 inside an fp16 graph.
fn island(g: &Graph, node: &Node) -> bool {
    matches!(node.op, Op::Unary(Un::Exp)) && !nonpositive(g, node.inputs[0])
}

/// Data movement whose result leaves the graph in fp32 (a step graph's present KV cache, made
/// from its fp32 past): done in fp32 on the past as it came in, the new token's keys or values
/// cast up, so the whole cache is not cast down at the input and up again at the output, and an
/// empty past (the first step) is never cast (tract-cuda's Cast fails on an empty tensor).
fn kept_fp32(g: &Graph, node: &Node, half_io: &dyn Fn(&str) -> bool) -> bool {
    let out = node.output;
    matches!(node.op, Op::Concat(_) | Op::ScatterElements { .. })
        && g.outputs.contains(&out)
        && g.dtype(out) == DType::F32
        && !half_io(&g.value(out).name)
}

/// True where `v` is provably <= 0: -(a a), or c - a a for a constant c <= 0.
fn nonpositive(g: &Graph, v: V) -> bool {
    let square = |v: V| matches!(g.producer(v), Node { op: Op::Binary(Bin::Mul), inputs, .. } if inputs[0] == inputs[1]);
    let const_le_zero = |v: V| matches!(&g.producer(v).op, Op::Const(ConstData::F32(d)) if d.iter().all(|&x| x <= 0.0));
    match g.producer(v) {
        Node { op: Op::Unary(Un::Neg), inputs, .. } => square(inputs[0]),
        Node { op: Op::Binary(Bin::Sub), inputs, .. } => const_le_zero(inputs[0]) && square(inputs[1]),
        _ => false,
    }
}

/// Rewrites `g` in half precision, its inputs and outputs fp32.
pub fn to_half(g: &Graph) -> Graph {
    to_half_io(g, &|_| false)
}

/// Rewrites `g` in half precision; the float inputs and outputs whose names `half_io` accepts
/// are fp16 at the graph's boundary, the others fp32.
pub fn to_half_io(g: &Graph, half_io: &dyn Fn(&str) -> bool) -> Graph {
    let mut h = Graph::new(&g.name);
    let mut map: HashMap<V, V> = HashMap::new();
    // fp32 copies of values, made on demand for islands.
    let mut full: HashMap<V, V> = HashMap::new();
    for node in &g.nodes {
        let out = node.output;
        match &node.op {
            Op::Input => {
                let val = g.value(out);
                if val.dtype == DType::F32 && half_io(&val.name) {
                    let v = h.input(&val.name, DType::F16, val.shape.clone());
                    map.insert(out, v);
                } else {
                    let v = h.input(&val.name, val.dtype, val.shape.clone());
                    full.insert(out, v);
                    map.insert(out, if val.dtype == DType::F32 { h.cast(v, DType::F16) } else { v });
                }
            }
            Op::Const(ConstData::F32(d)) => {
                let shape: Vec<usize> = g.shape(out).iter().map(|x| x.known().unwrap()).collect();
                let bits: Vec<u16> = d.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
                let name = g.value(out).name.clone();
                let v = h.constant(None, ConstData::F16(bits), &shape);
                h.values[v.0].name = format!("{name}.f16");
                let f = h.constant(None, ConstData::F32(d.clone()), &shape);
                h.values[f.0].name = name;
                map.insert(out, v);
                full.insert(out, f);
            }
            Op::Const(data) => {
                let shape: Vec<usize> = g.shape(out).iter().map(|x| x.known().unwrap()).collect();
                let v = h.constant(None, data.clone(), &shape);
                h.values[v.0].name = g.value(out).name.clone();
                map.insert(out, v);
                full.insert(out, v);
            }
            // fp32 whatever the LayerNorm's type (its stash type), read from the fp16 LayerNorm.
            Op::LayerNormStat(_) => {
                let r = h.add(node.op.clone(), &[map[&node.inputs[0]]]);
                full.insert(out, r);
                map.insert(out, h.cast(r, DType::F16));
            }
            op if island(g, node) || kept_fp32(g, node, half_io) => {
                let ins: Vec<V> = node
                    .inputs
                    .iter()
                    .map(|i| match full.get(i) {
                        Some(&f) => f,
                        None if h.dtype(map[i]) != DType::F16 => map[i],
                        None => {
                            let c = h.cast(map[i], DType::F32);
                            full.insert(*i, c);
                            c
                        }
                    })
                    .collect();
                let r = h.add(op.clone(), &ins);
                full.insert(out, r);
                map.insert(out, h.cast(r, DType::F16));
            }
            op => {
                let ins: Vec<V> = node.inputs.iter().map(|i| map[i]).collect();
                let r = h.add(op.clone(), &ins);
                map.insert(out, r);
            }
        }
    }
    for &o in &g.outputs {
        let v = match full.get(&o) {
            _ if g.dtype(o) == DType::F32 && half_io(&g.value(o).name) => map[&o],
            Some(&f) => f,
            None if h.dtype(map[&o]) == g.dtype(o) => map[&o],
            None => h.cast(map[&o], g.dtype(o)),
        };
        h.output(v, &g.value(o).name);
    }
    crate::ir::simplify::remove_dead(&mut h);
    h
}

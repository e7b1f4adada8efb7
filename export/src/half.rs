//! The fp16 variant of a graph: weights and activations in half precision, with LayerNorm,
//! softmax, the exponentials of the log-scales and every reduction kept in fp32 (islands with
//! casts around them; fp16 LayerNorm overflow is a known TensorRT failure). Inputs and outputs
//! stay fp32 so that callers feed both variants alike.

use std::collections::HashMap;

use crate::ir::{ConstData, DType, Graph, Op, V};
use crate::ops::Un;

fn island(op: &Op) -> bool {
    matches!(op, Op::LayerNorm(_) | Op::Softmax(_) | Op::Unary(Un::Exp) | Op::Reduce { .. })
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
            op if island(op) => {
                let ins: Vec<V> = node
                    .inputs
                    .iter()
                    .map(|i| match full.get(i) {
                        Some(&f) => f,
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

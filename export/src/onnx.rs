//! Lowering the IR to an ONNX model (protobuf), with weights inline or, past a size threshold,
//! in an external data file beside the model.

use std::collections::HashMap;

use crate::ir::{ConstData, DType, Dim, Graph, Op, V};
use crate::ops::shape::{SplitRole, split_groups};
use crate::proto::Msg;

/// ONNX IR version written (ONNX 1.13, the first with opset 18).
pub const IR_VERSION: i64 = 8;
/// Default opset: LayerNormalization (17) and ReduceMean with axes as input (18).
pub const DEFAULT_OPSET: i64 = 18;

/// Collects the ONNX nodes and initializers of one graph.
pub struct Lowering<'a> {
    g: &'a Graph,
    nodes: Vec<Msg>,
    initializers: Vec<(String, DType, Vec<usize>, Vec<u8>)>,
    counter: usize,
    /// Slices lowered as Splits.
    splits: HashMap<V, SplitRole>,
}

impl<'a> Lowering<'a> {
    pub fn name(&self, v: V) -> String {
        self.g.value(v).name.clone()
    }

    pub fn names(&self, vs: &[V]) -> Vec<String> {
        vs.iter().map(|&v| self.name(v)).collect()
    }

    pub fn rank(&self, v: V) -> usize {
        self.g.rank(v)
    }

    /// Whether the slice making `v` is lowered as (part of) a Split.
    pub fn split_role(&self, v: V) -> Option<&SplitRole> {
        self.splits.get(&v)
    }

    /// The graph being lowered.
    pub fn graph(&self) -> &Graph {
        self.g
    }

    /// Emits one ONNX node.
    pub fn node(&mut self, op_type: &str, name: &str, inputs: &[String], output: &str, attrs: Vec<Msg>) {
        self.node_outputs(op_type, name, inputs, &[output.to_string()], attrs);
    }

    /// Emits one ONNX node with several outputs ("" for an optional output left out).
    pub fn node_outputs(&mut self, op_type: &str, name: &str, inputs: &[String], outputs: &[String], attrs: Vec<Msg>) {
        let mut m = Msg::new();
        for i in inputs {
            m = m.string(1, i);
        }
        for o in outputs {
            m = m.string(2, o);
        }
        m = m.string(3, name).string(4, op_type);
        for a in &attrs {
            m = m.msg(5, a);
        }
        self.nodes.push(m);
    }

    /// An int64 constant vector as an initializer; returns its name.
    pub fn const_i64(&mut self, vals: &[i64]) -> String {
        self.counter += 1;
        let name = format!("{}.k{}", self.g.name, self.counter);
        let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push((name.clone(), DType::I64, vec![vals.len()], bytes));
        name
    }

    /// The dtype of a value.
    pub fn dtype(&self, v: V) -> DType {
        self.g.dtype(v)
    }

    /// A float scalar constant (shape []) of `dtype` (f32 or f16) as an initializer.
    pub fn const_scalar(&mut self, x: f32, dtype: DType) -> String {
        self.counter += 1;
        let name = format!("{}.k{}", self.g.name, self.counter);
        let bytes = match dtype {
            DType::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
            _ => x.to_le_bytes().to_vec(),
        };
        let dtype = if dtype == DType::F16 { DType::F16 } else { DType::F32 };
        self.initializers.push((name.clone(), dtype, vec![], bytes));
        name
    }

    pub fn attr_int(name: &str, v: i64) -> Msg {
        Msg::new().string(1, name).int(3, v).int(20, 2)
    }

    pub fn attr_float(name: &str, v: f32) -> Msg {
        Msg::new().string(1, name).float(2, v).int(20, 1)
    }

    pub fn attr_string(name: &str, v: &str) -> Msg {
        Msg::new().string(1, name).string(4, v).int(20, 3)
    }

    pub fn attr_ints(name: &str, v: &[i64]) -> Msg {
        Msg::new().string(1, name).ints(8, v).int(20, 7)
    }
}

fn value_info(name: &str, dtype: DType, shape: &[Dim]) -> Msg {
    let mut dims = Msg::new();
    for d in shape {
        let dim = match d {
            Dim::N(n) => Msg::new().int(1, *n as i64),
            Dim::S(s) => Msg::new().string(2, s),
        };
        dims = dims.msg(1, &dim);
    }
    let tensor = Msg::new().int(1, dtype.onnx()).msg(2, &dims);
    Msg::new().string(1, name).msg(2, &Msg::new().msg(1, &tensor))
}

/// Where large weights go: a data file of the graph's own beside it.
#[derive(Debug, Clone)]
pub struct ExternalData {
    /// File name of the data file, relative to the model file.
    pub location: String,
    /// Initializers of at least this many bytes go to the file.
    pub min_bytes: usize,
}

/// Decides where each initializer's bytes go: None keeps them inside the model, Some((location,
/// offset)) points at external data.
pub type Placer<'a> = dyn FnMut(&str, &[u8]) -> std::io::Result<Option<(String, u64)>> + 'a;

fn const_bytes(data: &ConstData) -> (DType, Vec<u8>) {
    match data {
        ConstData::F32(v) => (DType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ConstData::I64(v) => (DType::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ConstData::Bool(v) => (DType::Bool, v.iter().map(|&b| b as u8).collect()),
        ConstData::F16(v) => (DType::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// Encodes `g` as an ONNX model (the protobuf bytes), placing initializers with `place`.
pub fn encode(g: &Graph, opset: i64, doc: &str, metadata: &[(String, String)], place: &mut Placer) -> std::io::Result<Vec<u8>> {
    let mut lw = Lowering { g, nodes: Vec::new(), initializers: Vec::new(), counter: 0, splits: split_groups(g) };
    for node in &g.nodes {
        match &node.op {
            Op::Const(data) => {
                let (dtype, bytes) = const_bytes(data);
                let shape = g.shape(node.output).iter().map(|d| d.known().expect("constants have known shapes")).collect();
                lw.initializers.push((g.value(node.output).name.clone(), dtype, shape, bytes));
            }
            op => op.lower(node, &mut lw),
        }
    }
    let mut graph = Msg::new();
    for n in &lw.nodes {
        graph = graph.msg(1, n);
    }
    graph = graph.string(2, &g.name);
    for (name, dtype, shape, bytes) in &lw.initializers {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut t = Msg::new().ints(1, &dims).int(2, dtype.onnx()).string(8, name);
        match place(name, bytes)? {
            Some((location, offset)) => {
                for (k, v) in [("location", location), ("offset", offset.to_string()), ("length", bytes.len().to_string())] {
                    t = t.msg(13, &Msg::new().string(1, k).string(2, &v));
                }
                t = t.int(14, 1);
            }
            None => t = t.bytes(9, bytes),
        }
        graph = graph.msg(5, &t);
    }
    for &v in &g.inputs {
        let val = g.value(v);
        graph = graph.msg(11, &value_info(&val.name, val.dtype, &val.shape));
    }
    for &v in &g.outputs {
        let val = g.value(v);
        graph = graph.msg(12, &value_info(&val.name, val.dtype, &val.shape));
    }
    let mut model = Msg::new()
        .int(1, IR_VERSION)
        .string(2, "itarflow-export")
        .string(3, env!("CARGO_PKG_VERSION"))
        .string(6, doc)
        .msg(7, &graph)
        .msg(8, &Msg::new().string(1, "").int(2, opset));
    for (k, v) in metadata {
        model = model.msg(14, &Msg::new().string(1, k).string(2, v));
    }
    Ok(model.into_bytes())
}

/// Encodes `g` and writes it to `path` (atomically), with large weights in a data file of its
/// own beside it when `external` is given.
pub fn save(g: &Graph, path: &std::path::Path, opset: i64, external: Option<&ExternalData>) -> Result<(), crate::ExportError> {
    let werr = |p: &std::path::Path, source: std::io::Error| crate::ExportError::Write { path: p.into(), source };
    let Some(ext) = external else {
        let model = encode(g, opset, "", &[], &mut |_, _| Ok(None)).map_err(|e| werr(path, e))?;
        return itarflow_base::write_atomic(path, |w| std::io::Write::write_all(w, &model)).map_err(|e| werr(path, e));
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut store = crate::store::WeightStore::single(dir, &ext.location, ext.min_bytes);
    let model = encode(g, opset, "", &[], &mut |name, bytes| store.place(name, bytes)).map_err(|e| werr(path, e))?;
    // The data file is in place before the graph that refers to it.
    store.finish().map_err(|e| werr(&dir.join(&ext.location), e))?;
    itarflow_base::write_atomic(path, |w| std::io::Write::write_all(w, &model)).map_err(|e| werr(path, e))
}

/// Encodes `g` and writes it to `path` (atomically), its large weights placed in `store`.
pub fn save_shared(g: &Graph, path: &std::path::Path, opset: i64, store: &mut crate::store::WeightStore) -> Result<(), crate::ExportError> {
    let werr = |p: &std::path::Path, source: std::io::Error| crate::ExportError::Write { path: p.into(), source };
    let model = encode(g, opset, "", &[], &mut |name, bytes| store.place(name, bytes)).map_err(|e| werr(path, e))?;
    itarflow_base::write_atomic(path, |w| std::io::Write::write_all(w, &model)).map_err(|e| werr(path, e))
}

//! Lowering the IR to an ONNX model (protobuf), with weights inline or, past a size threshold,
//! in an external data file beside the model.

use crate::ir::{ConstData, DType, Dim, Graph, Op, V};
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

    /// Emits one ONNX node.
    pub fn node(&mut self, op_type: &str, name: &str, inputs: &[String], output: &str, attrs: Vec<Msg>) {
        let mut m = Msg::new();
        for i in inputs {
            m = m.string(1, i);
        }
        m = m.string(2, output).string(3, name).string(4, op_type);
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

/// Where large weights go.
#[derive(Debug, Clone)]
pub struct ExternalData {
    /// File name of the data file, relative to the model file.
    pub location: String,
    /// Initializers of at least this many bytes go to the file.
    pub min_bytes: usize,
}

/// An encoded model: the protobuf bytes and, when external data was used, the data file's bytes.
pub struct Encoded {
    pub model: Vec<u8>,
    pub external: Option<Vec<u8>>,
}

fn const_bytes(data: &ConstData) -> (DType, Vec<u8>) {
    match data {
        ConstData::F32(v) => (DType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ConstData::I64(v) => (DType::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ConstData::Bool(v) => (DType::Bool, v.iter().map(|&b| b as u8).collect()),
        ConstData::F16(v) => (DType::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// Encodes `g` as an ONNX model.
pub fn encode(g: &Graph, opset: i64, doc: &str, metadata: &[(String, String)], external: Option<&ExternalData>) -> Encoded {
    let mut lw = Lowering { g, nodes: Vec::new(), initializers: Vec::new(), counter: 0 };
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
    let mut data_file: Option<Vec<u8>> = None;
    for (name, dtype, shape, bytes) in &lw.initializers {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut t = Msg::new().ints(1, &dims).int(2, dtype.onnx()).string(8, name);
        match external {
            Some(ext) if bytes.len() >= ext.min_bytes => {
                let file = data_file.get_or_insert_with(Vec::new);
                // Page-aligned offsets let runtimes map the weights.
                file.resize(file.len().div_ceil(4096) * 4096, 0);
                let offset = file.len();
                file.extend_from_slice(bytes);
                for (k, v) in [("location", ext.location.clone()), ("offset", offset.to_string()), ("length", bytes.len().to_string())] {
                    t = t.msg(13, &Msg::new().string(1, k).string(2, &v));
                }
                t = t.int(14, 1);
            }
            _ => t = t.bytes(9, bytes),
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
    Encoded { model: model.into_bytes(), external: data_file }
}

/// Encodes `g` and writes it to `path` (atomically), with external data beside it when given.
pub fn save(g: &Graph, path: &std::path::Path, opset: i64, external: Option<&ExternalData>) -> Result<(), crate::ExportError> {
    let enc = encode(g, opset, "", &[], external);
    let werr = |p: &std::path::Path, e: std::io::Error| crate::ExportError::Write { path: p.into(), reason: e.to_string() };
    if let (Some(ext), Some(data)) = (external, &enc.external) {
        let data_path = path.with_file_name(&ext.location);
        itarflow_base::write_atomic(&data_path, |w| std::io::Write::write_all(w, data)).map_err(|e| werr(&data_path, e))?;
    }
    itarflow_base::write_atomic(path, |w| std::io::Write::write_all(w, &enc.model)).map_err(|e| werr(path, e))
}

//! A small typed graph IR: values with dtypes and (partly symbolic) shapes, nodes with one
//! output each, kept in topological order as they are built.
//!
//! The iTARFlow graphs are written once against [`Graph`]'s builder methods; [`grad`] adds the
//! reverse-mode gradient of a graph to itself, [`simplify`] removes dead nodes and folds
//! constants, and [`crate::onnx`] lowers the result to an ONNX model. Each op family lives in
//! its own file under `crate::ops`, holding its shape rule, its ONNX lowering and its adjoint.

pub mod grad;
pub mod optimize;
pub mod simplify;

use std::collections::HashMap;
use std::fmt;

pub use crate::ops::Op;

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    I64,
    Bool,
}

impl DType {
    /// The ONNX TensorProto.DataType code.
    pub fn onnx(self) -> i64 {
        match self {
            DType::F32 => 1,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::I64 => "int64",
            DType::Bool => "bool",
        }
    }
}

/// A dimension: a known size or a named symbol (batch "N", past length "P", ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    N(usize),
    S(String),
}

impl Dim {
    pub fn sym(name: &str) -> Self {
        Dim::S(name.to_string())
    }

    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::N(n) => Some(*n),
            Dim::S(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::N(n) => write!(f, "{n}"),
            Dim::S(s) => write!(f, "{s}"),
        }
    }
}

pub type Shape = Vec<Dim>;

/// A shape of known sizes.
pub fn fixed(dims: &[usize]) -> Shape {
    dims.iter().map(|&d| Dim::N(d)).collect()
}

/// Handle of a value in a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V(pub usize);

#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
}

/// Constant data.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<V>,
    pub output: V,
    pub name: String,
}

/// A graph under construction.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<V>,
    pub outputs: Vec<V>,
    scope: Vec<String>,
    counter: usize,
    /// Nodes whose inputs did not fit their op (see [`Graph::check`]).
    errors: Vec<String>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), ..Default::default() }
    }

    pub fn value(&self, v: V) -> &Value {
        &self.values[v.0]
    }

    pub fn shape(&self, v: V) -> &Shape {
        &self.values[v.0].shape
    }

    pub fn dtype(&self, v: V) -> DType {
        self.values[v.0].dtype
    }

    pub fn rank(&self, v: V) -> usize {
        self.values[v.0].shape.len()
    }

    /// Runs `f` with `name` appended to the naming scope ("layer2" then "block0" gives
    /// "layer2.block0.*").
    pub fn scoped<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    /// A unique name in the current scope.
    pub fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        let mut parts = self.scope.clone();
        parts.push(format!("{what}_{}", self.counter));
        parts.join(".")
    }

    /// The current scope joined with `what`, not made unique (for weights).
    pub fn scoped_name(&self, what: &str) -> String {
        let mut parts = self.scope.clone();
        parts.push(what.to_string());
        parts.join(".")
    }

    fn push_value(&mut self, name: String, dtype: DType, shape: Shape) -> V {
        self.values.push(Value { name, dtype, shape });
        V(self.values.len() - 1)
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> V {
        let v = self.push_value(name.to_string(), dtype, shape);
        self.nodes.push(Node { op: Op::Input, inputs: vec![], output: v, name: name.to_string() });
        self.inputs.push(v);
        v
    }

    /// Marks `v` as a graph output under `name`.
    pub fn output(&mut self, v: V, name: &str) {
        self.values[v.0].name = name.to_string();
        self.outputs.push(v);
    }

    /// Adds a node computing `op` on `inputs`; its output's dtype and shape come from the op's
    /// rule. Inputs that do not fit the op are recorded against the node (see [`Graph::check`])
    /// and building goes on with the first input's dtype and shape.
    pub fn add(&mut self, op: Op, inputs: &[V]) -> V {
        let name = self.fresh(op.kind());
        let (dtype, shape) = match op.infer(self, inputs) {
            Ok(ds) => ds,
            Err(reason) => {
                self.errors.push(format!("node {name}: {reason}"));
                match inputs.first() {
                    Some(&v) => (self.dtype(v), self.shape(v).clone()),
                    None => (DType::F32, Vec::new()),
                }
            }
        };
        let v = self.push_value(format!("{name}:0"), dtype, shape);
        self.nodes.push(Node { op, inputs: inputs.to_vec(), output: v, name });
        v
    }

    /// A named constant (a weight when `name` is given, else an anonymous constant).
    pub fn constant(&mut self, name: Option<&str>, data: ConstData, shape: &[usize]) -> V {
        let dtype = match &data {
            ConstData::F32(_) => DType::F32,
            ConstData::F16(_) => DType::F16,
            ConstData::I64(_) => DType::I64,
            ConstData::Bool(_) => DType::Bool,
        };
        let name = match name {
            Some(n) => self.scoped_name(n),
            None => self.fresh("const"),
        };
        let v = self.push_value(name.clone(), dtype, fixed(shape));
        self.nodes.push(Node { op: Op::Const(data), inputs: vec![], output: v, name });
        v
    }

    pub fn scalar(&mut self, x: f32) -> V {
        self.constant(None, ConstData::F32(vec![x]), &[])
    }

    pub fn weight(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> V {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "weight {name}");
        self.constant(Some(name), ConstData::F32(data), shape)
    }

    pub fn ints(&mut self, data: Vec<i64>) -> V {
        let n = data.len();
        self.constant(None, ConstData::I64(data), &[n])
    }

    /// Ok when every node's inputs fit its op, else the first misfit, naming the node.
    pub fn check(&self) -> Result<(), String> {
        match self.errors.first() {
            Some(e) => Err(format!(
                "graph {}: {e}{}",
                self.name,
                if self.errors.len() > 1 { format!(" (and {} more)", self.errors.len() - 1) } else { String::new() }
            )),
            None => Ok(()),
        }
    }

    /// Rebuilds the graph node by node: `rule` gets the new graph, an old node and its inputs in
    /// the new graph, and returns the value that stands for the node's output, or None to copy
    /// the node as it is. Inputs, constants (with their names), node names and outputs carry
    /// over; nodes that are graph outputs are copied as they are.
    pub fn rebuild(&self, mut rule: impl FnMut(&mut Graph, &Node, &[V]) -> Option<V>) -> Graph {
        let mut h = Graph::new(&self.name);
        h.counter = self.counter;
        h.errors = self.errors.clone();
        let mut map: HashMap<V, V> = HashMap::new();
        for node in &self.nodes {
            let ins: Vec<V> = node.inputs.iter().map(|i| map[i]).collect();
            let v = match &node.op {
                Op::Input => {
                    let val = self.value(node.output);
                    h.input(&val.name, val.dtype, val.shape.clone())
                }
                _ if self.outputs.contains(&node.output) => h.copy_node(self, node, &ins),
                _ => match rule(&mut h, node, &ins) {
                    Some(v) => v,
                    None => h.copy_node(self, node, &ins),
                },
            };
            map.insert(node.output, v);
        }
        for &o in &self.outputs {
            h.output(map[&o], &self.value(o).name);
        }
        h
    }

    /// A copy of `from`'s `node` on inputs `ins` of this graph, with its name (a constant with its
    /// data and value name).
    pub fn copy_node(&mut self, from: &Graph, node: &Node, ins: &[V]) -> V {
        let val = from.value(node.output);
        let v = match &node.op {
            Op::Const(_) => self.push_value(val.name.clone(), val.dtype, val.shape.clone()),
            op => match op.infer(self, ins) {
                Ok((dtype, shape)) => self.push_value(val.name.clone(), dtype, shape),
                Err(reason) => {
                    self.errors.push(format!("node {}: {reason}", node.name));
                    self.push_value(val.name.clone(), val.dtype, val.shape.clone())
                }
            },
        };
        self.nodes.push(Node { op: node.op.clone(), inputs: ins.to_vec(), output: v, name: node.name.clone() });
        v
    }

    /// The node producing `v`.
    pub fn producer(&self, v: V) -> &Node {
        self.nodes.iter().rev().find(|n| n.output == v).expect("every value has a producer")
    }
}

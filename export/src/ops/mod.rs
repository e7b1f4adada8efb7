//! The IR's operations. Each family's file holds, side by side, its shape rule, its lowering to
//! ONNX nodes and its adjoint (vector-Jacobian product) for [`crate::ir::grad`].

pub mod attention;
pub mod elementwise;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod scatter;
pub mod shape;
pub mod softmax;

use crate::ir::{ConstData, DType, Dim, Graph, Node, Shape, V};
use crate::onnx::Lowering;

pub use elementwise::{Bin, Un};
pub use reduce::Red;

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Input,
    Const(ConstData),
    Binary(Bin),
    Unary(Un),
    /// Element type conversion.
    Cast(DType),
    /// select(cond, a, b).
    Where,
    /// a < b, elementwise.
    Less,
    /// a == b, elementwise (integers).
    Equal,
    MatMul,
    /// ONNX Reshape semantics: 0 copies the input dimension, -1 is inferred.
    Reshape(Vec<i64>),
    /// Reshape to the runtime shape of the second input (lowered as Shape + Reshape).
    ReshapeLike,
    Transpose(Vec<usize>),
    Concat(usize),
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Zero padding along one axis.
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    /// Gather along `axis` with the indices given as second input.
    Gather {
        axis: usize,
    },
    /// Broadcast to the runtime shape of the second input (lowered as Shape + Expand).
    Expand,
    /// Reduction over `axes`, keeping them as size 1.
    Reduce {
        kind: Red,
        axes: Vec<usize>,
    },
    Softmax(usize),
    /// LayerNormalization over the last axis; inputs x, scale, bias.
    LayerNorm(f32),
    /// A statistic of a LayerNorm's input over the last axis (fp32, the axis kept as 1), read
    /// from the LayerNorm itself: its one input is the LayerNorm's output, and the lowering
    /// makes it an extra output of the same ONNX node.
    LayerNormStat(layernorm::Stat),
    /// softmax(q kt + mask) v over whole sequences; inputs q, kt, v, mask.
    Attention,
    /// The probabilities softmax(q kt + mask) of an attention, read from it: its one input is
    /// the attention's output (lowered as the name of the attention's Softmax output).
    AttentionProbs,
    /// (data, indices, updates): data with updates written (or added) at indices along `axis`.
    ScatterElements {
        axis: usize,
        add: bool,
    },
    /// (data, indices): data read at indices along `axis`.
    GatherElements {
        axis: usize,
    },
}

impl Op {
    /// A short name, used in node names.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Const(_) => "const",
            Op::Binary(b) => b.onnx(),
            Op::Unary(u) => u.onnx(),
            Op::Cast(_) => "Cast",
            Op::Where => "Where",
            Op::Less => "Less",
            Op::Equal => "Equal",
            Op::MatMul => "MatMul",
            Op::Reshape(_) | Op::ReshapeLike => "Reshape",
            Op::Transpose(_) => "Transpose",
            Op::Concat(_) => "Concat",
            Op::Slice { .. } => "Slice",
            Op::Pad { .. } => "Pad",
            Op::Gather { .. } => "Gather",
            Op::Expand => "Expand",
            Op::Reduce { kind, .. } => kind.onnx(),
            Op::Softmax(_) => "Softmax",
            Op::LayerNorm(_) => "LayerNormalization",
            Op::LayerNormStat(stat) => stat.name(),
            Op::Attention => "Attention",
            Op::AttentionProbs => "AttentionProbs",
            Op::ScatterElements { .. } => "ScatterElements",
            Op::GatherElements { .. } => "GatherElements",
        }
    }

    /// Output dtype and shape for `inputs`, or why the inputs do not fit the op (dtypes that
    /// disagree, inner dimensions of a product, broadcast conflicts, ranks, index types).
    pub fn infer(&self, g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
        let arity = match self {
            Op::Input | Op::Const(_) => 0,
            Op::Unary(_) | Op::Cast(_) | Op::Reshape(_) | Op::Transpose(_) | Op::Slice { .. } | Op::Pad { .. } => 1,
            Op::Reduce { .. } | Op::Softmax(_) | Op::LayerNormStat(_) | Op::AttentionProbs => 1,
            Op::Attention => 4,
            Op::Binary(_)
            | Op::Less
            | Op::Equal
            | Op::MatMul
            | Op::ReshapeLike
            | Op::Gather { .. }
            | Op::Expand
            | Op::GatherElements { .. } => 2,
            Op::Where | Op::LayerNorm(_) | Op::ScatterElements { .. } => 3,
            Op::Concat(_) => inputs.len().max(1),
        };
        if inputs.len() != arity {
            return Err(format!("{} takes {arity} input(s), got {}", self.kind(), inputs.len()));
        }
        match self {
            Op::Input | Op::Const(_) => Err("inputs and constants are created directly".into()),
            Op::Binary(_) | Op::Unary(_) | Op::Cast(_) | Op::Where | Op::Less | Op::Equal => elementwise::infer(self, g, inputs),
            Op::MatMul => matmul::infer(g, inputs),
            Op::Reduce { axes, .. } => reduce::infer(g, inputs, axes),
            Op::Softmax(_) => softmax::infer(g, inputs),
            Op::LayerNorm(_) => layernorm::infer(g, inputs),
            Op::LayerNormStat(_) => layernorm::infer_stat(g, inputs),
            Op::Attention => attention::infer(g, inputs),
            Op::AttentionProbs => attention::infer_probs(g, inputs),
            Op::ScatterElements { .. } | Op::GatherElements { .. } => scatter::infer(self, g, inputs),
            Op::Reshape(_)
            | Op::ReshapeLike
            | Op::Transpose(_)
            | Op::Concat(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Gather { .. }
            | Op::Expand => shape::infer(self, g, inputs),
        }
    }

    /// Emits the ONNX node(s) computing `node`.
    pub fn lower(&self, node: &Node, lw: &mut Lowering) {
        match self {
            Op::Input | Op::Const(_) => {}
            Op::Binary(_) | Op::Unary(_) | Op::Cast(_) | Op::Where | Op::Less | Op::Equal => elementwise::lower(self, node, lw),
            Op::MatMul => matmul::lower(node, lw),
            Op::Reduce { .. } => reduce::lower(self, node, lw),
            Op::Softmax(axis) => softmax::lower(*axis, node, lw),
            Op::LayerNorm(eps) => layernorm::lower(*eps, node, lw),
            // An output of the LayerNorm's node (see `layernorm::lower`).
            Op::LayerNormStat(_) => {}
            Op::Attention => attention::lower(node, lw),
            // The attention's Softmax output (see `attention::lower`).
            Op::AttentionProbs => {}
            Op::ScatterElements { .. } | Op::GatherElements { .. } => scatter::lower(self, node, lw),
            Op::Reshape(_)
            | Op::ReshapeLike
            | Op::Transpose(_)
            | Op::Concat(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Gather { .. }
            | Op::Expand => shape::lower(self, node, lw),
        }
    }

    /// Gradients with respect to each input given the output's gradient `gy`; `wants[i]` says
    /// whether input i needs one.
    pub fn vjp(&self, g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
        match self {
            Op::Input | Op::Const(_) | Op::Less | Op::Equal => vec![None; node.inputs.len()],
            Op::Binary(_) | Op::Unary(_) | Op::Cast(_) | Op::Where => elementwise::vjp(self, g, node, gy, wants),
            Op::MatMul => matmul::vjp(g, node, gy, wants),
            Op::Reduce { .. } => reduce::vjp(self, g, node, gy),
            Op::Softmax(axis) => softmax::vjp(*axis, g, node, gy),
            Op::LayerNorm(_) => layernorm::vjp(g, node, gy, wants),
            Op::LayerNormStat(_) => layernorm::vjp_stat(wants),
            Op::Attention => attention::vjp(g, node, gy, wants),
            Op::AttentionProbs => attention::vjp_probs(wants),
            Op::ScatterElements { .. } | Op::GatherElements { .. } => scatter::vjp(self, g, node, gy, wants),
            Op::Reshape(_)
            | Op::ReshapeLike
            | Op::Transpose(_)
            | Op::Concat(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Gather { .. }
            | Op::Expand => shape::vjp(self, g, node, gy, wants),
        }
    }
}

/// The dtype shared by `inputs`, or an error naming the ones that differ.
pub fn same_dtype(g: &Graph, inputs: &[V]) -> Result<DType, String> {
    let d = g.dtype(inputs[0]);
    match inputs.iter().find(|&&v| g.dtype(v) != d) {
        Some(&v) => {
            Err(format!("inputs of dtypes {} and {} ({} and {})", d.name(), g.dtype(v).name(), g.value(inputs[0]).name, g.value(v).name))
        }
        None => Ok(d),
    }
}

/// [`broadcast`], or an error where two known sizes differ and neither is 1.
pub fn broadcast_checked(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let rank = a.len().max(b.len());
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| &b[j]);
        if let (Some(Dim::N(x)), Some(Dim::N(y))) = (da, db)
            && x != y
            && *x != 1
            && *y != 1
        {
            return Err(format!("shapes {} and {} do not broadcast", show(a), show(b)));
        }
    }
    Ok(broadcast(a, b))
}

/// A shape as text, e.g. [N, 49, 16].
pub fn show(s: &Shape) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Numpy broadcasting of two shapes; symbolic dims are assumed to agree with each other.
pub fn broadcast(a: &Shape, b: &Shape) -> Shape {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = (i + a.len()).checked_sub(rank).map(|j| &a[j]);
            let db = (i + b.len()).checked_sub(rank).map(|j| &b[j]);
            match (da, db) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (Some(Dim::N(1)), Some(y)) => y.clone(),
                (Some(x), Some(Dim::N(1))) => x.clone(),
                (Some(Dim::S(s)), Some(_)) | (Some(_), Some(Dim::S(s))) => Dim::S(s.clone()),
                (Some(x), Some(_)) => x.clone(),
                (None, None) => unreachable!(),
            }
        })
        .collect()
}

/// Sums `grad` (of the broadcast shape) back to the shape of `target`.
pub fn unbroadcast(g: &mut Graph, grad: V, target: V) -> V {
    let from = g.shape(grad).clone();
    let to = g.shape(target).clone();
    if from == to {
        return grad;
    }
    let lead = from.len() - to.len();
    let mut axes: Vec<usize> = (0..lead).collect();
    for (i, d) in to.iter().enumerate() {
        if *d == Dim::N(1) && from[lead + i] != Dim::N(1) {
            axes.push(lead + i);
        }
    }
    let mut out = grad;
    if !axes.is_empty() {
        out = g.add(Op::Reduce { kind: Red::Sum, axes }, &[out]);
    }
    if lead > 0 {
        out = g.add(Op::ReshapeLike, &[out, target]);
    }
    out
}

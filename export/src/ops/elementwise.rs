//! Elementwise operations: binary arithmetic with broadcasting, unary math, cast, comparison
//! and select.
//!
//! Adjoints: d(a+b) = (g, g); d(a-b) = (g, -g); d(ab) = (g b, g a); d(a/b) = (g/b, -g a/b^2),
//! each summed back over broadcast axes; d(-x) = -g; d(exp x) = g exp(x); d(log x) = g/x;
//! d(sin x) = g cos x; d(cos x) = -g sin x; d(sqrt x) = g / (2 sqrt x);
//! d(erf x) = g 2/sqrt(pi) exp(-x^2); d(gelu x) = g (Phi(x) + x phi(x)); d(cast) = cast back; d(where(c, a, b)) = (-, where(c, g, 0),
//! where(c, 0, g)).

use super::{Op, broadcast_checked, same_dtype, unbroadcast};
use crate::ir::{DType, Graph, Node, Shape, V};
use crate::onnx::Lowering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

impl Bin {
    pub fn onnx(self) -> &'static str {
        match self {
            Bin::Add => "Add",
            Bin::Sub => "Sub",
            Bin::Mul => "Mul",
            Bin::Div => "Div",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Un {
    Neg,
    Exp,
    Log,
    Sin,
    Cos,
    Sqrt,
    Erf,
    /// max(x, 0); its adjoint passes the gradient where x > 0.
    Relu,
    /// Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))): one IR op lowered to the five ONNX nodes
    /// that ONNX Runtime fuses into one (Bias)Gelu kernel and tract into GeluExact. As five IR
    /// ops, a score graph's backward shared their intermediates, which kept the engines from
    /// fusing the forward and left ten elementwise ops in the backward; this op's adjoint is
    /// the closed form in ten, with the forward fused.
    Gelu,
}

impl Un {
    pub fn onnx(self) -> &'static str {
        match self {
            Un::Neg => "Neg",
            Un::Exp => "Exp",
            Un::Log => "Log",
            Un::Sin => "Sin",
            Un::Cos => "Cos",
            Un::Sqrt => "Sqrt",
            Un::Erf => "Erf",
            Un::Relu => "Relu",
            Un::Gelu => "Gelu",
        }
    }
}

pub fn infer(op: &Op, g: &Graph, inputs: &[V]) -> Result<(DType, Shape), String> {
    let shape = |v: V| g.shape(v);
    Ok(match op {
        Op::Binary(_) => (same_dtype(g, inputs)?, broadcast_checked(shape(inputs[0]), shape(inputs[1]))?),
        Op::Unary(_) => {
            if !g.dtype(inputs[0]).is_float() {
                return Err(format!("{} of a {} tensor", op.kind(), g.dtype(inputs[0]).name()));
            }
            (g.dtype(inputs[0]), shape(inputs[0]).clone())
        }
        Op::Cast(to) => (*to, shape(inputs[0]).clone()),
        Op::Less | Op::Equal => {
            same_dtype(g, inputs)?;
            (DType::Bool, broadcast_checked(shape(inputs[0]), shape(inputs[1]))?)
        }
        Op::Where => {
            if g.dtype(inputs[0]) != DType::Bool {
                return Err(format!("Where's condition is {}, not bool", g.dtype(inputs[0]).name()));
            }
            let d = same_dtype(g, &inputs[1..])?;
            (d, broadcast_checked(shape(inputs[0]), &broadcast_checked(shape(inputs[1]), shape(inputs[2]))?)?)
        }
        other => return Err(format!("{} is not elementwise", other.kind())),
    })
}

pub fn lower(op: &Op, node: &Node, lw: &mut Lowering) {
    let ins = lw.names(&node.inputs);
    let out = lw.name(node.output);
    match op {
        Op::Binary(b) => lw.node(b.onnx(), &node.name, &ins, &out, vec![]),
        Op::Unary(Un::Gelu) => lower_gelu(node, lw),
        Op::Unary(u) => lw.node(u.onnx(), &node.name, &ins, &out, vec![]),
        Op::Cast(to) => lw.node("Cast", &node.name, &ins, &out, vec![Lowering::attr_int("to", to.onnx())]),
        Op::Less => lw.node("Less", &node.name, &ins, &out, vec![]),
        Op::Equal => lw.node("Equal", &node.name, &ins, &out, vec![]),
        Op::Where => lw.node("Where", &node.name, &ins, &out, vec![]),
        _ => unreachable!(),
    }
}

/// GELU as Div by sqrt(2), Erf, Add 1, Mul by 0.5, Mul: the pattern both engines fuse (ONNX
/// Runtime matches the division, not a product by 1/sqrt(2); tract rewrites the division as that
/// product and matches it).
fn lower_gelu(node: &Node, lw: &mut Lowering) {
    let x = lw.name(node.inputs[0]);
    let out = lw.name(node.output);
    let dtype = lw.dtype(node.inputs[0]);
    let part = |p: &str| (format!("{}.{p}", node.name), format!("{out}.{p}"));
    let (sqrt2, one, half) = (lw.const_scalar(std::f32::consts::SQRT_2, dtype), lw.const_scalar(1.0, dtype), lw.const_scalar(0.5, dtype));
    let (div_node, s) = part("div");
    let (erf_node, e) = part("erf");
    let (add_node, e1) = part("add");
    let (half_node, h) = part("half");
    lw.node("Div", &div_node, &[x.clone(), sqrt2], &s, vec![]);
    lw.node("Erf", &erf_node, &[s], &e, vec![]);
    lw.node("Add", &add_node, &[e, one], &e1, vec![]);
    lw.node("Mul", &half_node, &[x, half], &h, vec![]);
    lw.node("Mul", &node.name, &[h, e1], &out, vec![]);
}

impl Graph {
    pub fn binary(&mut self, op: Bin, a: V, b: V) -> V {
        self.add(Op::Binary(op), &[a, b])
    }
    pub fn plus(&mut self, a: V, b: V) -> V {
        self.binary(Bin::Add, a, b)
    }
    pub fn minus(&mut self, a: V, b: V) -> V {
        self.binary(Bin::Sub, a, b)
    }
    pub fn times(&mut self, a: V, b: V) -> V {
        self.binary(Bin::Mul, a, b)
    }
    pub fn divide(&mut self, a: V, b: V) -> V {
        self.binary(Bin::Div, a, b)
    }
    pub fn unary(&mut self, op: Un, x: V) -> V {
        self.add(Op::Unary(op), &[x])
    }
    /// x * c for a constant c.
    pub fn scale(&mut self, x: V, c: f32) -> V {
        let c = self.scalar(c);
        self.times(x, c)
    }
    /// x + c for a constant c.
    pub fn shift(&mut self, x: V, c: f32) -> V {
        let c = self.scalar(c);
        self.plus(x, c)
    }
    pub fn cast(&mut self, x: V, to: DType) -> V {
        if self.dtype(x) == to {
            return x;
        }
        self.add(Op::Cast(to), &[x])
    }
    /// Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))) ([`Un::Gelu`]).
    pub fn gelu(&mut self, x: V) -> V {
        self.unary(Un::Gelu, x)
    }
}

pub fn vjp(op: &Op, g: &mut Graph, node: &Node, gy: V, wants: &[bool]) -> Vec<Option<V>> {
    let x = node.inputs[0];
    let y = node.output;
    match op {
        Op::Binary(b) => {
            let (a, bb) = (node.inputs[0], node.inputs[1]);
            let (ga, gb) = match b {
                Bin::Add => (wants[0].then_some(gy), wants[1].then_some(gy)),
                Bin::Sub => (wants[0].then_some(gy), wants[1].then(|| g.unary(Un::Neg, gy))),
                Bin::Mul => (wants[0].then(|| g.times(gy, bb)), wants[1].then(|| g.times(gy, a))),
                Bin::Div => {
                    let ga = wants[0].then(|| g.divide(gy, bb));
                    let gb = wants[1].then(|| {
                        let q = g.divide(y, bb);
                        let t = g.times(gy, q);
                        g.unary(Un::Neg, t)
                    });
                    (ga, gb)
                }
            };
            vec![ga.map(|v| unbroadcast(g, v, a)), gb.map(|v| unbroadcast(g, v, bb))]
        }
        Op::Unary(u) => {
            let gx = match u {
                Un::Neg => g.unary(Un::Neg, gy),
                Un::Exp => g.times(gy, y),
                Un::Log => g.divide(gy, x),
                Un::Sin => {
                    let c = g.unary(Un::Cos, x);
                    g.times(gy, c)
                }
                Un::Cos => {
                    let s = g.unary(Un::Sin, x);
                    let t = g.times(gy, s);
                    g.unary(Un::Neg, t)
                }
                Un::Sqrt => {
                    let t = g.divide(gy, y);
                    g.scale(t, 0.5)
                }
                Un::Erf => {
                    let sq = g.times(x, x);
                    let n = g.unary(Un::Neg, sq);
                    let e = g.unary(Un::Exp, n);
                    let d = g.scale(e, std::f32::consts::FRAC_2_SQRT_PI);
                    g.times(gy, d)
                }
                Un::Gelu => {
                    // 2 gelu'(x) = 1 + erf(s) + x sqrt(2/pi) exp(-s^2), s = x / sqrt(2); the
                    // constant enters the exponent as its log, saving a product. s is a product
                    // by 1 / sqrt(2), not the forward's division: ONNX Runtime would merge equal
                    // divisions, and the forward's then shared intermediates keep it from fusing
                    // the forward into one Gelu kernel (the demo's score on one thread ~2% slower).
                    let s = g.scale(x, std::f32::consts::FRAC_1_SQRT_2);
                    let e = g.unary(Un::Erf, s);
                    let e1 = g.shift(e, 1.0);
                    let sq = g.times(s, s);
                    let ln_k = g.scalar((2.0 / std::f32::consts::PI).sqrt().ln());
                    let arg = g.minus(ln_k, sq);
                    let ex = g.unary(Un::Exp, arg);
                    let xe = g.times(x, ex);
                    let d2 = g.plus(e1, xe);
                    // The 1/2 on gy (a product by a constant matrix in every adjoint), where
                    // the `scales` pass folds it into that matrix.
                    let hgy = g.scale(gy, 0.5);
                    g.times(hgy, d2)
                }
                Un::Relu => {
                    let zero = g.scalar(0.0);
                    let zero = g.cast(zero, g.dtype(gy));
                    let positive = g.add(Op::Less, &[zero, x]);
                    g.add(Op::Where, &[positive, gy, zero])
                }
            };
            vec![Some(gx)]
        }
        Op::Cast(_) => vec![Some(g.cast(gy, g.dtype(x)))],
        Op::Where => {
            let zero = g.scalar(0.0);
            let zero = g.cast(zero, g.dtype(gy));
            let c = node.inputs[0];
            let ga = wants[1].then(|| g.add(Op::Where, &[c, gy, zero]));
            let gb = wants[2].then(|| g.add(Op::Where, &[c, zero, gy]));
            vec![None, ga.map(|v| unbroadcast(g, v, node.inputs[1])), gb.map(|v| unbroadcast(g, v, node.inputs[2]))]
        }
        _ => unreachable!(),
    }
}

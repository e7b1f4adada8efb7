//! Every IR adjoint rule against central finite differences: for each op, the graph
//! f(x) = sum(w * op(x)) with fixed random w is differentiated by the IR's reverse mode, both are
//! lowered to ONNX and run by tract, and <grad f, v> is compared with (f(x + h v) - f(x - h v)) / 2h
//! for random directions v.

use itarflow_export::ir::grad::gradients;
use itarflow_export::ir::{ConstData, DType, Dim, Graph, V, fixed};
use itarflow_export::onnx;
use itarflow_export::ops::{Bin, Op, Un};
use itarflow_rt::HostTensor as Feed;
use itarflow_rt::provider::run_host;
use itarflow_rt::provider::tract::TractGraph;

fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    itarflow_base::GaussianNoise::new(seed).sample_f32(n).into_iter().map(|x| x * scale).collect()
}

/// Builds f = sum(w * body(x)) and its gradient; checks the gradient with finite differences.
/// `x0` maps the Gaussian sample to the op's domain (e.g. positive for log and sqrt).
fn check(name: &str, shape: &[usize], x0: impl Fn(f32) -> f32, body: impl Fn(&mut Graph, V) -> V) {
    let n: usize = shape.iter().product();
    let mut g = Graph::new(name);
    let x = g.input("x", DType::F32, fixed(shape));
    let y = body(&mut g, x);
    let out_shape: Vec<usize> = g.shape(y).iter().map(|d| d.known().expect("test outputs have known shapes")).collect();
    let m: usize = out_shape.iter().product();
    let w = g.constant(Some("w"), ConstData::F32(noise(m, 99, 1.0)), &out_shape);
    let wy = g.times(y, w);
    let axes: Vec<usize> = (0..out_shape.len()).collect();
    let f = if axes.is_empty() { wy } else { g.sum(wy, &axes) };
    let f = g.reshape(f, &[1]);
    let one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[one, f]);
    let gx = gradients(&mut g, &[(f, seed)], &[x])[0].expect("f depends on x");
    g.output(f, "f");
    g.output(gx, "grad");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.onnx"));
    onnx::save(&g, &path, onnx::DEFAULT_OPSET, None).unwrap();
    let run = TractGraph::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let xv: Vec<f32> = noise(n, 1, 1.0).into_iter().map(&x0).collect();
    let eval = |xs: Vec<f32>| run_host(&run, &[Feed::F32(shape.to_vec(), xs)]).unwrap();
    let base = eval(xv.clone());
    let grad = base[1].f32().unwrap();
    assert_eq!(grad.len(), n, "{name}: gradient has the input's size");
    for k in 0..3 {
        let v = noise(n, 10 + k, 1.0);
        let h = 1e-2f32;
        let plus: Vec<f32> = xv.iter().zip(&v).map(|(a, b)| a + h * b).collect();
        let minus: Vec<f32> = xv.iter().zip(&v).map(|(a, b)| a - h * b).collect();
        let fd = (eval(plus)[0].f32().unwrap()[0] as f64 - eval(minus)[0].f32().unwrap()[0] as f64) / (2.0 * h as f64);
        let dd: f64 = grad.iter().zip(&v).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        let scale = grad.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt() * (n as f64).sqrt();
        let rel = (fd - dd).abs() / scale.max(1e-6);
        assert!(rel < 2e-3, "{name}: finite difference {fd:.6} vs gradient {dd:.6} (rel {rel:.2e})");
    }
}

#[test]
fn arithmetic_with_broadcasting() {
    for (name, op) in [("add", Bin::Add), ("sub", Bin::Sub), ("mul", Bin::Mul), ("div", Bin::Div)] {
        // x on both sides of a broadcast: (2,3,4) op (3,1) slice of itself.
        check(
            name,
            &[2, 3, 4],
            |x| x + if matches!(op, Bin::Div) { 3.0 } else { 0.0 },
            |g, x| {
                let part = g.slice(x, 0, 0, 1);
                let part = g.slice(part, 2, 1, 2);
                let part = g.reshape(part, &[3, 1]);
                g.binary(op, x, part)
            },
        );
    }
}

#[test]
fn unary_math() {
    type Case = (&'static str, Un, fn(f32) -> f32);
    let cases: [Case; 8] = [
        ("neg", Un::Neg, |x| x),
        ("exp", Un::Exp, |x| x),
        ("log", Un::Log, |x| x.abs() + 0.5),
        ("sin", Un::Sin, |x| x),
        ("cos", Un::Cos, |x| x),
        ("sqrt", Un::Sqrt, |x| x.abs() + 0.5),
        ("erf", Un::Erf, |x| x),
        // Away from the kink at 0, where finite differences straddle it.
        ("relu", Un::Relu, |x| if x >= 0.0 { x + 0.2 } else { x - 0.2 }),
    ];
    for (name, op, domain) in cases {
        check(name, &[3, 5], domain, |g, x| g.unary(op, x));
    }
    check("gelu", &[3, 5], |x| 2.0 * x, |g, x| g.gelu(x));
}

#[test]
fn matmul_batched_both_operands_differentiated() {
    check(
        "matmul",
        &[2, 3, 4],
        |x| x,
        |g, x| {
            let xt = g.transpose_last(x);
            g.matmul(x, xt)
        },
    );
    check(
        "matmul_weight",
        &[2, 3, 4],
        |x| x,
        |g, x| {
            let w = g.constant(None, ConstData::F32(noise(20, 5, 1.0)), &[4, 5]);
            g.matmul(x, w)
        },
    );
}

#[test]
fn data_movement() {
    check("reshape", &[2, 3, 4], |x| x, |g, x| g.reshape(x, &[0, 12]));
    check("transpose", &[2, 3, 4], |x| x, |g, x| g.transpose(x, vec![2, 0, 1]));
    check(
        "concat",
        &[2, 3],
        |x| x,
        |g, x| {
            let s = g.unary(Un::Sin, x);
            g.concat(&[x, s, x], 1)
        },
    );
    check("slice", &[4, 5], |x| x, |g, x| g.slice(x, 1, 1, 4));
    check("pad", &[4, 5], |x| x, |g, x| g.pad(x, 0, 2, 1));
    check("flip", &[4, 5], |x| x, |g, x| g.flip(x, 0));
    check(
        "expand",
        &[1, 5],
        |x| x,
        |g, x| {
            let like = g.constant(None, ConstData::F32(vec![0.0; 15]), &[3, 5]);
            g.add(Op::Expand, &[x, like])
        },
    );
}

#[test]
fn reductions_softmax_and_layer_norm() {
    check("reduce_sum", &[3, 4, 5], |x| x, |g, x| g.sum(x, &[1]));
    check("reduce_mean", &[3, 4, 5], |x| x, |g, x| g.mean(x, &[0, 2]));
    check("softmax", &[3, 6], |x| 2.0 * x, |g, x| g.softmax(x, 1));
    check(
        "layer_norm",
        &[3, 8],
        |x| 2.0 * x + 0.3,
        |g, x| {
            let s = g.constant(Some("scale"), ConstData::F32(noise(8, 3, 1.0)), &[8]);
            let b = g.constant(Some("bias"), ConstData::F32(noise(8, 4, 1.0)), &[8]);
            g.layer_norm(x, s, b, 1e-5)
        },
    );
}

/// The attention op's adjoint (flash attention's row-sum identity) with respect to each of q, kt
/// and v, under a causal mask; x holds all three, (2, 3 [q, k^T, v], 4, 4).
#[test]
fn attention_with_respect_to_queries_keys_and_values() {
    check(
        "attention",
        &[2, 3, 4, 4],
        |x| 1.5 * x,
        |g, x| {
            let q = g.slice(x, 1, 0, 1);
            let kt = g.slice(x, 1, 1, 2);
            let v = g.slice(x, 1, 2, 3);
            let mask: Vec<f32> = (0..16).map(|n| if n % 4 > n / 4 { f32::NEG_INFINITY } else { 0.0 }).collect();
            let mask = g.constant(Some("mask"), ConstData::F32(mask), &[4, 4]);
            g.attention(q, kt, v, mask)
        },
    );
}

#[test]
fn where_and_cast() {
    check(
        "where",
        &[3, 4],
        |x| x,
        |g, x| {
            let mask = g.constant(None, ConstData::Bool((0..12).map(|i| i % 3 == 0).collect()), &[3, 4]);
            let e = g.unary(Un::Exp, x);
            g.add(Op::Where, &[mask, x, e])
        },
    );
    // Cast rounds, so finite differences are meaningless through it; its adjoint is the cast
    // back: d/dx sum(w * f32(f16(x))) = f32(f16(w)).
    let mut g = Graph::new("cast");
    let x = g.input("x", DType::F32, fixed(&[6]));
    let h = g.cast(x, DType::F16);
    let back = g.cast(h, DType::F32);
    let wv = vec![0.1f32, -1.7, 3.3333333, 1e-3, 2.0, -0.25];
    let w = g.constant(None, ConstData::F32(wv.clone()), &[6]);
    let wy = g.times(back, w);
    let f = g.sum(wy, &[0]);
    let one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[one, f]);
    let gx = gradients(&mut g, &[(f, seed)], &[x])[0].unwrap();
    g.output(gx, "grad");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cast.onnx");
    onnx::save(&g, &path, onnx::DEFAULT_OPSET, None).unwrap();
    let got = run_host(&TractGraph::load(&path).unwrap(), &[Feed::F32(vec![6], vec![0.5; 6])]).unwrap().remove(0).into_f32().unwrap();
    let want: Vec<f32> = wv.iter().map(|&w| half::f16::from_f32(w).to_f32()).collect();
    assert_eq!(got, want);
    // The symbolic batch dimension survives differentiation.
    let mut g = Graph::new("sym");
    let x = g.input("x", DType::F32, vec![Dim::sym("N"), Dim::N(3)]);
    let y = g.unary(Un::Exp, x);
    let s = g.sum(y, &[1]);
    let one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[one, s]);
    let gx = gradients(&mut g, &[(s, seed)], &[x])[0].unwrap();
    assert_eq!(g.shape(gx), &vec![Dim::sym("N"), Dim::N(3)]);
}

#[test]
fn scatter_and_gather_elements() {
    // Indices along axis 1 of a (2, 3, 4) tensor: one row of slots per (batch, column).
    let slots: Vec<i64> = (0..8).map(|i| (i * 7 % 3) as i64).collect();
    for add in [false, true] {
        let name = if add { "scatter_add" } else { "scatter_elements" };
        check(
            name,
            &[2, 3, 4],
            |v| v,
            |g, x| {
                let idx = g.constant(None, ConstData::I64(slots.clone()), &[2, 1, 4]);
                // The updates depend on x too, so both the data and the updates paths are checked.
                let upd = g.slice(x, 1, 2, 3);
                let upd = g.unary(Un::Sin, upd);
                if add { g.scatter_add(x, idx, upd, 1) } else { g.scatter_elements(x, idx, upd, 1) }
            },
        );
    }
    // Repeated indices: the gradient of a gather accumulates.
    let repeated: Vec<i64> = (0..2 * 5 * 4).map(|i| (i % 3) as i64).collect();
    check(
        "gather_elements",
        &[2, 3, 4],
        |v| v,
        |g, x| {
            let idx = g.constant(None, ConstData::I64(repeated.clone()), &[2, 5, 4]);
            g.gather_elements(x, idx, 1)
        },
    );
}

/// erf by its Maclaurin series in f64 (|x| <= 4: terms peak near 1e6, so the sum keeps ~1e-10).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        let next = term / (2 * n + 1) as f64;
        sum += next;
        if next.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The GELU op's adjoint, element by element, against gelu'(x) = Phi(x) + x phi(x) computed
/// independently in f64 (the finite-difference check above weighs the whole gradient at once,
/// and a 2% error in the x phi(x) term passed it).
#[test]
fn gelu_adjoint_is_the_closed_form_derivative() {
    let xs: Vec<f32> = (0..81).map(|i| -4.0 + 0.1 * i as f32).collect();
    let n = xs.len();
    let mut g = Graph::new("gelu_grad");
    let x = g.input("x", DType::F32, fixed(&[n]));
    let y = g.gelu(x);
    let f = g.sum(y, &[0]);
    let one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[one, f]);
    let gx = gradients(&mut g, &[(f, seed)], &[x])[0].expect("f depends on x");
    g.output(y, "y");
    g.output(gx, "grad");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gelu_grad.onnx");
    onnx::save(&g, &path, onnx::DEFAULT_OPSET, None).unwrap();
    let run = TractGraph::load(&path).unwrap();
    let out = run_host(&run, &[Feed::F32(vec![n], xs.clone())]).unwrap();
    let (yv, grad) = (out[0].f32().unwrap(), out[1].f32().unwrap());
    for (k, &x) in xs.iter().enumerate() {
        let x = x as f64;
        let phi_cdf = 0.5 * (1.0 + erf_series(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let (want_y, want_d) = (x * phi_cdf, phi_cdf + x * pdf);
        assert!((yv[k] as f64 - want_y).abs() < 1e-6 * (1.0 + want_y.abs()), "gelu({x}) = {} vs {want_y}", yv[k]);
        assert!((grad[k] as f64 - want_d).abs() < 1e-6, "gelu'({x}) = {} vs {want_d}", grad[k]);
    }
}

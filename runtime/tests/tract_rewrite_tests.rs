//! tract's load-time rewrites on the shipped demo package's graphs: they find what they are
//! meant to (the KV attention and LayerNorms of every block of a step graph, with either cache,
//! and the fixed cache's writes; the masked softmaxes, LayerNorms and the adjoints of LayerNorm
//! and GELU and the broadcast sums of the score graph, and its linear layers and attention products on CPUs with
//! AVX-512F or AVX2 and FMA) and the rewritten plans give the outputs
//! tract's own plans give, on random inputs, and an image the same outputs whatever batch it runs
//! in.

use std::collections::HashMap;
use std::path::PathBuf;

use itarflow_rt::provider::tract::{MatrixKernel, Rewrites, matrix_kernel, rewrite_for_cpu};
use tract_onnx::prelude::*;

/// This crate's directory, as `cargo test` says when it runs the test (a test binary built in
/// another checkout sharing the target directory, and reused by cargo, would point there with
/// the compile-time `env!`).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn graph(name: &str) -> PathBuf {
    manifest_dir().join("../models/fmnist/package/fp32").join(name)
}

/// The graph typed from ONNX with its batch N (and cached length P, if any) set.
fn typed(name: &str, batch: i64, past: i64) -> TypedModel {
    let model = tract_onnx::onnx().model_for_path(graph(name)).unwrap().into_typed().unwrap();
    let mut values = HashMap::from([(model.symbols.sym("N"), TDim::Val(batch))]);
    values.insert(model.symbols.sym("P"), TDim::Val(past));
    model.set_symbols(&values).unwrap()
}

/// Deterministic inputs for `model`: floats in (-1, 1) (noise levels in (0.05, 0.3) for `t`,
/// inverse temperatures 1), integers 0 except the step's position `past`.
fn inputs(model: &TypedModel, past: i64) -> TVec<TValue> {
    model
        .input_outlets()
        .unwrap()
        .iter()
        .map(|o| {
            let name = &model.node(o.node).name;
            let fact = model.outlet_fact(*o).unwrap();
            let shape: Vec<usize> = fact.shape.as_concrete().unwrap().to_vec();
            let n: usize = shape.iter().product();
            let t = match fact.datum_type {
                DatumType::I64 if name == "pos" => Tensor::from_shape(&shape, &vec![past; n]),
                DatumType::I64 => Tensor::from_shape(&shape, &vec![1i64; n]),
                _ => {
                    let v: Vec<f32> = match name.as_str() {
                        "t" => (0..n).map(|i| 0.05 + 0.25 * (i as f32 / n as f32)).collect(),
                        "inv_temp" => vec![1.0; n],
                        _ => (0..n).map(|i| ((i * 7919 + name.len() * 31) % 2001) as f32 / 1000.0 - 1.0).collect(),
                    };
                    Tensor::from_shape(&shape, &v)
                }
            };
            t.unwrap().into_tvalue()
        })
        .collect()
}

fn run(model: TypedModel, feeds: TVec<TValue>) -> Vec<Vec<f32>> {
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    plan.run(feeds).unwrap().iter().map(|t| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}

/// Runs the graph through tract with and without the rewrites: the rewrites found, and the
/// largest difference of any output relative to the output's largest value.
fn compare(name: &str, batch: i64, past: i64) -> (Rewrites, f64) {
    let plain = typed(name, batch, past);
    let feeds = inputs(&plain, past);
    let (rewritten, found) = rewrite_for_cpu(plain.clone()).unwrap();
    let (want, got) = (run(plain, feeds.clone()), run(rewritten, feeds));
    let mut worst = 0.0f64;
    eprintln!("{name}: {found:?}");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.len(), g.len(), "{name}: output sizes differ");
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
        for (a, b) in w.iter().zip(g) {
            assert!(b.is_finite(), "{name}: non-finite output");
            worst = worst.max((*a as f64 - *b as f64).abs() / scale);
        }
    }
    eprintln!("{name}: largest difference {worst:.2e} of the output's scale");
    (found, worst)
}

#[test]
fn step_graphs_attend_through_the_cache_in_one_op_with_the_same_outputs() {
    // layer 0 has one block, layer 5 three; 5 tokens cached, 6 rows. The fixed-length cache's
    // step writes each block's key and value (2 scatters) and masks the later slots.
    for (name, blocks, scatters) in [("layer0_step.onnx", 1, 0), ("layer5_step.onnx", 3, 0), ("layer5_step_fixed.onnx", 3, 6)] {
        let (found, diff) = compare(name, 6, 5);
        assert_eq!((found.attentions, found.scatters), (blocks, scatters), "{name}: {found:?}");
        // Two LayerNorms per block, each one op.
        assert_eq!(found.layer_norms, 2 * blocks, "{name}: {found:?}");
        assert!(diff < 1e-5, "{name}: outputs differ by {diff:.2e} of their scale");
    }
}

#[test]
fn score_graph_runs_its_products_on_the_avx512_kernel_with_the_same_outputs() {
    let (found, diff) = compare("score.onnx", 2, 0);
    // 8 blocks: one causal softmax each (its mask added inside), one GELU adjoint, two
    // LayerNorms and their adjoints.
    assert_eq!(found.softmaxes, 8, "{found:?}");
    assert_eq!((found.gelu_grads, found.layer_norms, found.layer_norm_grads), (8, 16, 16), "{found:?}");
    // 6 layers: the position embedding (1, T, C) and the conditioning (N, 1, C) added to the
    // tokens.
    assert_eq!(found.broadcasts, 12, "{found:?}");
    if matrix_kernel() != MatrixKernel::Portable {
        // Every linear layer forward and adjoint, and the attention's products (2 forward and
        // 4 adjoint per block; tract splits some per head before the rewrite).
        assert!(found.linears >= 8 * 4 * 2, "{found:?}");
        assert!(found.matmuls >= 8 * 6, "{found:?}");
    } else {
        assert_eq!((found.linears, found.matmuls), (0, 0), "{found:?}");
    }
    assert!(diff < 1e-5, "score outputs differ by {diff:.2e} of their scale");
}

/// An image's outputs do not depend on the batch it runs in: one row alone gives bit for bit
/// what it gives as the first row of a batch of 4 (every product runs on the same kernel, also
/// where decluttering drops the axes of one row), so the server's merged requests and a
/// sampler's chunks give the images sampled one at a time. tract's own plans do not (their
/// matrix kernels differ by shape: 1e-7 apart on the score graph, amplified by sampling).
#[test]
fn rewritten_plans_give_an_image_the_same_outputs_alone_and_in_a_batch() {
    if matrix_kernel() == MatrixKernel::Portable {
        eprintln!("no AVX-512F, nor AVX2 with FMA here: the products stay tract's, whose results depend on the batch");
        return;
    }
    for (name, past) in [("layer5_step.onnx", 5), ("layer0_cond.onnx", 0), ("score.onnx", 0)] {
        let plain = typed(name, 4, past);
        let feeds = inputs(&plain, past);
        // The same inputs for the image alone: the first of every batched input's 4 rows.
        let one: TVec<TValue> = feeds
            .iter()
            .map(|t| {
                if t.rank() == 0 {
                    return t.clone();
                }
                let mut shape = t.shape().to_vec();
                shape[0] = 1;
                let n: usize = shape.iter().product();
                match t.datum_type() {
                    DatumType::I64 => {
                        Tensor::from_shape(&shape, &t.to_plain_array_view::<i64>().unwrap().iter().copied().take(n).collect::<Vec<_>>())
                    }
                    _ => Tensor::from_shape(&shape, &t.to_plain_array_view::<f32>().unwrap().iter().copied().take(n).collect::<Vec<_>>()),
                }
                .unwrap()
                .into_tvalue()
            })
            .collect();
        let whole = run(rewrite_for_cpu(plain).unwrap().0, feeds);
        let alone = run(rewrite_for_cpu(typed(name, 1, past)).unwrap().0, one);
        for (w, a) in whole.iter().zip(&alone) {
            let per = w.len() / 4;
            assert_eq!(a.len(), per, "{name}: output sizes");
            assert!(a.iter().zip(&w[..per]).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: one image alone differs from it in a batch");
        }
    }
}

//! The export's optimisation passes leave every graph's outputs unchanged: each pass alone and
//! all together, on every graph kind of the reference checkpoint, run by tract on random inputs,
//! against the graph without passes (relative error <= 1e-6), and they shrink the graphs they
//! target.

mod common;

use common::*;
use itarflow::deploy::weights;
use itarflow_export::ir::optimize::Passes;
use itarflow_export::ir::{DType, Dim, Graph};
use itarflow_export::model::layer::GuidedStyle;
use itarflow_export::model::{Weights, graphs};
use itarflow_export::onnx;
use itarflow_rt::HostTensor;
use itarflow_rt::provider::run_host;
use itarflow_rt::provider::tract::TractGraph;

/// Random inputs for `g` with batch 3: floats N(0, 0.5) (noise levels and temperatures in
/// (0.1, 0.4)), labels in range or -1, positions and steps 0 or 1, clip bounds +-inf.
fn inputs(g: &Graph, seed: u64) -> Vec<HostTensor> {
    let mut noise = itarflow_base::GaussianNoise::new(seed);
    g.inputs
        .iter()
        .map(|&v| {
            let val = g.value(v);
            let shape: Vec<usize> = val
                .shape
                .iter()
                .map(|d| match d {
                    Dim::N(n) => *n,
                    Dim::S(s) if s == "K" => 3,
                    Dim::S(_) => 3,
                })
                .collect();
            let n: usize = shape.iter().product();
            match (val.dtype, val.name.as_str()) {
                (DType::I64, "y") => HostTensor::I64(shape, (0..n as i64).map(|i| if i == 2 { -1 } else { i % 10 }).collect()),
                (DType::I64, _) => HostTensor::I64(shape, vec![1; n]),
                (_, "t" | "levels" | "inv_temp" | "inv_temp_u") => {
                    HostTensor::F32(shape, (0..n).map(|i| 0.4 - 0.3 * (i % 5) as f32 / 5.0).collect())
                }
                (_, "clip") => HostTensor::F32(shape, vec![f32::NEG_INFINITY, f32::INFINITY]),
                _ => HostTensor::F32(shape, noise.sample_f32(n).iter().map(|x| 0.5 * x).collect()),
            }
        })
        .collect()
}

fn run(g: &Graph, dir: &std::path::Path, tag: &str, feeds: &[HostTensor]) -> Vec<Vec<f32>> {
    let path = dir.join(format!("{}_{tag}.onnx", g.name));
    onnx::save(g, &path, onnx::DEFAULT_OPSET, None).unwrap();
    let out = run_host(&TractGraph::load(&path).unwrap(), feeds).unwrap();
    out.into_iter().map(|t| t.into_f32().unwrap_or_default()).collect()
}

#[test]
fn every_pass_leaves_every_graph_kind_unchanged() {
    let model = tiny(false);
    let w = weights(&model);
    let ws = Weights::new(&model.config, &w);
    let dir = tempfile::tempdir().unwrap();
    let built = [
        graphs::score(&ws).unwrap(),
        graphs::denoise_step(&ws).unwrap(),
        graphs::layer_vjp(&ws, 1).unwrap(),
        graphs::forward(&ws, 2).unwrap(),
        graphs::step(&ws, 3, false).unwrap(),
        graphs::step(&ws, 3, true).unwrap(),
        graphs::invert(&ws, 0, None).unwrap(),
        graphs::invert(&ws, 1, Some(GuidedStyle::Tarflow)).unwrap(),
        graphs::invert(&ws, 1, Some(GuidedStyle::Starflow)).unwrap(),
    ];
    let one = |f: fn(&mut Passes)| {
        let mut p = Passes::NONE;
        f(&mut p);
        p
    };
    let passes = [
        ("slice_grads", one(|p| p.slice_grads = true)),
        ("negations", one(|p| p.negations = true)),
        ("transposes", one(|p| p.transposes = true)),
        ("cse", one(|p| p.cse = true)),
        ("scales", one(|p| p.scales = true)),
        ("all", Passes::ALL),
    ];
    for (k, g) in built.iter().enumerate() {
        let feeds = inputs(g, 10 + k as u64);
        let want = run(g, dir.path(), "plain", &feeds);
        for (name, p) in passes {
            let opt = p.run(g);
            let got = run(&opt, dir.path(), name, &feeds);
            assert_eq!(got.len(), want.len());
            for (o, (a, b)) in got.iter().zip(&want).enumerate() {
                let e = rel_err(a, b);
                assert!(e <= 1e-6, "{} with {name}: output {o} differs by {e:.2e}", g.name);
            }
            if name == "all" {
                println!("{}: {} nodes -> {}", g.name, g.nodes.len(), opt.nodes.len());
            }
        }
    }
}

#[test]
fn the_passes_shrink_the_graphs_they_target() {
    let model = tiny(false);
    let w = weights(&model);
    let ws = Weights::new(&model.config, &w);
    let count = |g: &Graph, kind: &str| g.nodes.iter().filter(|n| n.op.kind() == kind).count();
    let score = graphs::score(&ws).unwrap();
    let opt = Passes::ALL.run(&score);
    // The qkv and (a, b) slices' gradients: one Concat each instead of zero-padded sums.
    assert!(count(&opt, "Pad") < count(&score, "Pad") / 2, "Pad {} -> {}", count(&score, "Pad"), count(&opt, "Pad"));
    assert!(count(&opt, "Neg") < count(&score, "Neg"), "Neg {} -> {}", count(&score, "Neg"), count(&opt, "Neg"));
    // The conditioning of every layer computes log t and the label lookup once.
    assert_eq!(count(&opt, "Log"), 1);
    // The adjoints' products by LayerNorm scales and GELU's 1/2 folded into constant matrices.
    let mut no_scales = Passes::ALL;
    no_scales.scales = false;
    let unfolded = no_scales.run(&score);
    // (Products of activations: the folded products of constants are computed once, at load.)
    let on_activations = |g: &Graph| {
        let constant = |v| matches!(g.producer(v).op.kind(), "const" | "Transpose");
        g.nodes.iter().filter(|n| n.op.kind() == "Mul" && !n.inputs.iter().all(|&i| constant(i))).count()
    };
    assert!(on_activations(&opt) < on_activations(&unfolded), "Mul {} -> {}", on_activations(&unfolded), on_activations(&opt));
    // The adjoints read each LayerNorm's mean and 1/std from it: one ONNX node with three outputs,
    // no reduction of the LayerNorm's input in the backward pass.
    let lns = count(&opt, "LayerNormalization");
    assert!(lns > 0 && count(&opt, "LayerNormMean") == lns && count(&opt, "LayerNormInvStdDev") == lns);
    let bytes = onnx::encode(&opt, onnx::DEFAULT_OPSET, "", &[], &mut |_, _| Ok(None)).unwrap();
    // NodeProto.op_type is field 4: the key byte 0x22, the length 18, the name.
    let op_type = b"\x22\x12LayerNormalization";
    let nodes = bytes.windows(op_type.len()).filter(|w| w == op_type).count();
    assert_eq!(nodes, lns, "one ONNX node per LayerNorm");
    // A single token's attention layouts are reshapes, not transposes.
    let step = graphs::step(&ws, 0, false).unwrap();
    let opt = Passes::ALL.run(&step);
    assert!(count(&opt, "Transpose") < count(&step, "Transpose"), "{} -> {}", count(&step, "Transpose"), count(&opt, "Transpose"));
}

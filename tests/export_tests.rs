//! Exported graphs of the reference checkpoint, run by tract and ONNX Runtime, against the
//! reference vectors and the Burn model.

mod common;

use burn::prelude::*;
use common::*;
use itarflow::deploy::weights;
use itarflow_export::model::{Weights, graphs};
use itarflow_export::onnx;
use itarflow_rt::HostTensor as Feed;
use itarflow_rt::provider::ort::{OrtDevice, OrtGraph};
use itarflow_rt::provider::run_host;
use itarflow_rt::provider::tract::TractGraph;

fn load(g: &itarflow_export::ir::Graph, dir: &std::path::Path) -> TractGraph {
    let path = dir.join(format!("{}.onnx", g.name));
    onnx::save(g, &path, onnx::DEFAULT_OPSET, None).unwrap();
    TractGraph::load(&path).unwrap()
}

fn f32_feed(npz: &itarflow_base::Npz, name: &str) -> Feed {
    let (shape, data) = array(npz, name);
    Feed::F32(shape, data)
}

#[test]
fn layer_forward_graphs_reproduce_reference_block_outputs() {
    let v = vectors();
    let model = tiny(false);
    let w = weights(&model);
    let ws = Weights::new(&model.config, &w);
    let dir = tempfile::tempdir().unwrap();
    let (_, t) = array(&v, "t");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let (_, outs) = array(&v, "block_outputs");
    let (_, lds) = array(&v, "block_logdets");
    let (xs, x0) = array(&v, "x_patchified");
    let per = 4 * 64 * 4;
    for l in 0..4 {
        let g = graphs::forward(&ws, l).unwrap();
        let tract = load(&g, dir.path());
        let ort = OrtGraph::load(&dir.path().join(format!("{}.onnx", g.name)), &OrtDevice::Cpu, None)
            .expect("ONNX Runtime (pip install onnxruntime==1.31.1, as scripts/setup.sh does)");
        let input = if l == 0 { x0.clone() } else { outs[(l - 1) * per..l * per].to_vec() };
        let feeds = [Feed::F32(xs.clone(), input), Feed::F32(vec![4], t.clone()), Feed::I64(vec![4], y.clone())];
        for (engine, res) in [("tract", run_host(&tract, &feeds).unwrap()), ("ort cpu", run_host(&ort, &feeds).unwrap())] {
            let ez = rel_err(res[0].f32().unwrap(), &outs[l * per..(l + 1) * per]);
            let el = rel_err(res[1].f32().unwrap(), &lds[l * 4..(l + 1) * 4]);
            println!("layer{l}_forward ({engine}): z {ez:.2e}, logdet {el:.2e}");
            assert!(ez < 1e-4 && el < 1e-4, "layer {l} on {engine}: {ez:.2e} {el:.2e}");
        }
    }
}

#[test]
fn score_graph_reproduces_reference_score_and_log_p() {
    let v = vectors();
    let model = tiny(false);
    let w = weights(&model);
    let g = graphs::score(&Weights::new(&model.config, &w)).unwrap();
    println!("score graph: {} nodes", g.nodes.len());
    let dir = tempfile::tempdir().unwrap();
    let run = load(&g, dir.path());
    let (_, t) = array(&v, "t");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let res = run_host(&run, &[f32_feed(&v, "x"), Feed::F32(vec![4], t), Feed::I64(vec![4], y)]).unwrap();
    let es = rel_err(res[0].f32().unwrap(), &array(&v, "score").1);
    let el = rel_err(res[1].f32().unwrap(), &array(&v, "logp").1);
    println!("score graph (tract): score {es:.2e}, logp {el:.2e}");
    assert!(es < 1e-4 && el < 1e-4);
}

#[test]
fn stepping_the_step_graph_equals_the_full_sequence() {
    let model = tiny(false);
    let w = weights(&model);
    let ws = Weights::new(&model.config, &w);
    let dir = tempfile::tempdir().unwrap();
    let b = 2;
    let t = vec![0.2f32, 0.05];
    let y = vec![3i64, -1];
    let labels = itarflow::Labels::Classes(y.clone());
    let conds = model.conds(Tensor::from_data(TensorData::new(t.clone(), [b]), &device()), &labels);
    for l in [0usize, 1] {
        let layer = &model.layers[l];
        let (tokens, c) = model.token_shape(l);
        let u = gaussian([b, tokens, c], 70 + l as u64, 1.0);
        let (a_full, b_full) = layer.network(u.clone(), &conds[l], &model.shared_backbone);
        let cond_run = load(&graphs::cond(&ws, l).unwrap(), dir.path());
        let cond = run_host(&cond_run, &[Feed::F32(vec![b], t.clone()), Feed::I64(vec![b], y.clone())]).unwrap().remove(0);
        let e = rel_err(cond.f32().unwrap(), &values(conds[l].clone()));
        assert!(e < 1e-5, "cond graph {e:.2e}");
        let (heads, hd) = (1, 64);
        let uv = values(u.clone());
        let (av, bv) = (values(a_full), values(b_full));
        for fixed in [false, true] {
            let step = load(&graphs::step(&ws, l, fixed).unwrap(), dir.path());
            // Growing cache: empty past; fixed: T zeroed slots (what is after pos is masked).
            let cache = if fixed { tokens } else { 0 };
            let mut past: Vec<Feed> = vec![Feed::F32(vec![b, heads, cache, hd], vec![0.0; b * heads * cache * hd]); 4];
            let mut worst = 0.0f64;
            for n in 0..tokens {
                let token: Vec<f32> = (0..b).flat_map(|r| uv[(r * tokens + n) * c..(r * tokens + n + 1) * c].to_vec()).collect();
                let mut feeds =
                    vec![Feed::F32(vec![b, c], token), Feed::I64(vec![], vec![n as i64]), cond.clone(), Feed::F32(vec![b], vec![1.0; b])];
                feeds.extend(past.iter().cloned());
                let out = run_host(&step, &feeds).unwrap();
                let want = |full: &[f32]| -> Vec<f32> {
                    (0..b).flat_map(|r| full[(r * tokens + n) * c..(r * tokens + n + 1) * c].to_vec()).collect()
                };
                worst = worst.max(rel_err(out[0].f32().unwrap(), &want(&av))).max(rel_err(out[1].f32().unwrap(), &want(&bv)));
                assert_eq!(out[2].shape()[2], if fixed { tokens } else { n + 1 });
                past = out[2..].to_vec();
            }
            let kind = if fixed { "step_fixed" } else { "step" };
            println!("layer{l}_{kind} x{tokens} (tract) vs full sequence: {worst:.2e}");
            assert!(worst < 1e-4, "layer {l} {kind}: {worst:.2e}");
        }
    }
}

fn export_tiny(
    dir: &std::path::Path,
    opts: impl FnOnce(&mut itarflow_export::package::ExportOptions),
) -> itarflow_base::manifest::Manifest {
    let model = tiny(false);
    let mut o = itarflow_export::package::ExportOptions::for_model(&model.config);
    o.reference = itarflow::deploy::reference(&model, 3, 0.15, 1);
    opts(&mut o);
    itarflow_export::package::export(&model.config, &weights(&model), dir, &o, &mut |_| {}).unwrap()
}

#[test]
fn every_graph_of_both_precisions_passes_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let m = export_tiny(&dir, |o| o.precisions = itarflow_export::package::Precisions::Both);
    // Per layer: forward, cond, step, step_fixed, layer_vjp, invert, invert_cfg,
    // invert_cfg_starflow; plus the score and denoising-step graphs.
    assert_eq!(m.graphs.len(), 2 * (8 * 4 + 2));
    let report = itarflow::deploy::check_package(&dir).unwrap();
    assert!(report.skipped.is_empty(), "ONNX Runtime is installed by scripts/setup.sh: {:?}", report.skipped);
    let rows = &report.rows;
    for engine in ["tract", "cpu"] {
        for precision in ["fp32", "fp16"] {
            for graph in [
                "layer3_cond",
                "layer3_forward",
                "layer3_step",
                "layer3_step_fixed",
                "layer3_invert",
                "layer3_invert_cfg",
                "layer3_invert_cfg_starflow",
                "score",
                "layerwise_score",
                "forward_chain",
                "denoise_step",
            ] {
                assert!(
                    rows.iter().any(|r| r.engine == engine && r.precision == precision && r.graph == graph),
                    "{graph} {precision} not checked on {engine}"
                );
            }
        }
    }
    print!("{}", itarflow_base::check::table(rows));
    for r in rows {
        assert!(r.pass, "{} {} {} {}: {:.2e} > {:.0e}", r.graph, r.precision, r.engine, r.output, r.rel, r.tolerance);
    }
}

#[test]
fn per_graph_external_data_runs_in_tract_and_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let m = export_tiny(&dir, |o| {
        o.shared_weights = false;
        o.external_min_bytes = Some(4096);
    });
    let fwd = m.graph(itarflow_base::manifest::GraphKind::Forward, Some(2), "fp32").unwrap();
    assert_eq!(fwd.external_data, ["fp32/layer2_forward.weights"]);
    let ext = &fwd.external_data[0];
    let (graph_bytes, data_bytes) = (dir.join(&fwd.file).metadata().unwrap().len(), dir.join(ext).metadata().unwrap().len());
    assert!(graph_bytes * 5 < data_bytes, "the graph file ({graph_bytes} B) should hold only small tensors ({data_bytes} B outside)");
    let report = itarflow::deploy::check_package(&dir).unwrap();
    assert!(report.rows.iter().any(|r| r.engine == "cpu"), "external data through ONNX Runtime");
    assert_eq!(report.failures(), 0, "{}", itarflow_base::check::table(&report.rows));
}

#[test]
fn shared_weight_files_hold_each_weight_once_and_run_on_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, inline) = (tmp.path().join("shared"), tmp.path().join("inline"));
    let m = export_tiny(&shared, |_| {});
    export_tiny(&inline, |o| o.shared_weights = false);
    // Every graph of layer 2 (forward, cond, step, fixed step, VJP) and the score graph read
    // layer 2's weights from one file.
    for g in m.graphs.iter().filter(|g| g.layer == Some(2) || g.layer.is_none()) {
        assert!(g.external_data.contains(&"fp32/layer2.weights".to_string()), "{}: {:?}", g.name, g.external_data);
    }
    let size = |dir: &std::path::Path, ext: &str| -> u64 {
        std::fs::read_dir(dir.join("fp32"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .map(|p| p.metadata().unwrap().len())
            .sum()
    };
    let weights = size(&shared, "weights");
    let params = 4 * tiny(false).config.num_params() as u64;
    println!(
        "shared package: {} B of weight files for {params} B of parameters; inline package: {} B of graphs",
        weights,
        size(&inline, "onnx")
    );
    // Stored once: the parameters (less the small ones kept inline and the prior's variance) plus
    // derived constants (class-embedding mean, causal masks), within 10%.
    assert!(weights > params - params / 10 && weights < params + params / 10, "{weights} B for {params} B of parameters");
    assert!(size(&shared, "onnx") + weights < size(&inline, "onnx") / 3);
    let report = itarflow::deploy::check_package(&shared).unwrap();
    assert!(report.rows.iter().any(|r| r.engine == "cpu") && report.rows.iter().any(|r| r.engine == "tract"));
    assert_eq!(report.failures(), 0, "{}", itarflow_base::check::table(&report.rows));
}

#[test]
fn altered_or_missing_files_are_rejected_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let m = export_tiny(&dir, |_| {});
    m.verify(&dir).unwrap();
    let file = dir.join("fp32/layer1_step.onnx");
    let mut bytes = std::fs::read(&file).unwrap();
    let k = bytes.len() / 2;
    bytes[k] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let e = itarflow_base::manifest::Manifest::read(&dir).unwrap().verify(&dir).unwrap_err().to_string();
    assert!(e.contains("fp32/layer1_step.onnx") && e.contains("sha256"), "{e}");
    std::fs::remove_file(dir.join("prior.npz")).unwrap();
    std::fs::write(&file, {
        bytes[k] ^= 1;
        &bytes
    })
    .unwrap();
    let e = itarflow_base::manifest::Manifest::read(&dir).unwrap().verify(&dir).unwrap_err().to_string();
    assert!(e.contains("prior.npz") && e.contains("missing"), "{e}");
    let e = itarflow_base::manifest::Manifest::read(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn chained_layer_vjps_give_the_reference_score() {
    // Forward through the per-layer graphs, then back through the per-layer VJP graphs:
    // g_z = -z, g_logdet = D at the top; the result is the score (patch 2: unpatchify at the end).
    let v = vectors();
    let model = tiny(false);
    let w = weights(&model);
    let ws = Weights::new(&model.config, &w);
    let dir = tempfile::tempdir().unwrap();
    let (_, t) = array(&v, "t");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let (xs, x0) = array(&v, "x_patchified");
    let common = [Feed::F32(vec![4], t.clone()), Feed::I64(vec![4], y.clone())];
    let mut inputs = vec![x0];
    for l in 0..4 {
        let run = load(&graphs::forward(&ws, l).unwrap(), dir.path());
        let mut feeds = vec![Feed::F32(xs.clone(), inputs[l].clone())];
        feeds.extend(common.iter().cloned());
        inputs.push(run_host(&run, &feeds).unwrap().remove(0).into_f32().unwrap());
    }
    let mut g: Vec<f32> = inputs[4].iter().map(|z| -z).collect();
    for l in (0..4).rev() {
        let run = load(&graphs::layer_vjp(&ws, l).unwrap(), dir.path());
        let mut feeds = vec![Feed::F32(xs.clone(), inputs[l].clone())];
        feeds.extend(common.iter().cloned());
        feeds.push(Feed::F32(xs.clone(), g));
        feeds.push(Feed::F32(vec![4], vec![256.0; 4]));
        g = run_host(&run, &feeds).unwrap().remove(0).into_f32().unwrap();
    }
    // (B, T, c) tokens of 2x2 patches back to (B, 1, 16, 16) images.
    let mut score = vec![0f32; g.len()];
    for b in 0..4 {
        for gi in 0..8 {
            for gj in 0..8 {
                for pi in 0..2 {
                    for pj in 0..2 {
                        score[b * 256 + (gi * 2 + pi) * 16 + gj * 2 + pj] = g[(b * 64 + gi * 8 + gj) * 4 + pi * 2 + pj];
                    }
                }
            }
        }
    }
    let e = rel_err(&score, &array(&v, "score").1);
    println!("chained layer VJPs (tract) vs reference score: {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
}

//! Criterion benchmarks on the demo model (models/fmnist): every graph kind (cond, forward, step
//! with the growing and the fixed cache, layer VJP, whole-model score), the layer-wise score and
//! log p chains, and end-to-end sampling, on tract, ONNX Runtime CPU and Burn; and the export of
//! the reference tiny checkpoint. `cargo bench --bench engines`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use itarflow::checkpoint::{self, ImportOptions};
use itarflow::sample::{Guidance as BurnGuidance, options_for, sample as burn_sample, seeded_noise};
use itarflow_base::manifest::GraphKind;
use itarflow_rt::provider::{Engine, HostTensor};
use itarflow_rt::sampler::{self, ScoreForm};
use itarflow_rt::{GraphSet, Loaded, Model, Precision, Provider, ProviderOptions, Sampler, with_graphs};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const BATCH: usize = 16;

/// The inputs of one step of the last layer (first in sampling order) at position `pos`.
fn step_inputs(model: &Model, pos: usize, fixed: bool) -> Vec<HostTensor> {
    let info = model.manifest.layers.last().unwrap();
    let b = BATCH;
    let mut v = vec![
        HostTensor::F32(vec![b, info.token_dim], vec![0.1; b * info.token_dim]),
        HostTensor::I64(vec![], vec![pos as i64]),
        HostTensor::F32(vec![b, info.width], vec![0.01; b * info.width]),
        HostTensor::F32(vec![b], vec![1.0; b]),
    ];
    let len = if fixed { info.tokens } else { pos };
    for _ in 0..2 * info.blocks {
        v.push(HostTensor::F32(vec![b, info.heads, len, info.head_dim], vec![0.05; b * info.heads * len * info.head_dim]));
    }
    v
}

fn run<E: Engine>(c: &mut Criterion, name: &str, graph: &E, inputs: &[HostTensor]) {
    let values: Vec<E::Value> = inputs.iter().map(|t| graph.upload(t).unwrap()).collect();
    c.bench_function(name, |b| b.iter(|| black_box(graph.run_values(values.iter().collect()).unwrap())));
}

fn graphs<E: Engine>(c: &mut Criterion, engine: &str, gs: &GraphSet<E>) {
    let model = gs.model();
    let m = &model.manifest;
    let l = m.layers.len() - 1;
    let info = &m.layers[l];
    let cfg = &m.model;
    let (t, y) = (HostTensor::F32(vec![BATCH], vec![0.1; BATCH]), HostTensor::I64(vec![BATCH], vec![3; BATCH]));
    let tokens = HostTensor::F32(vec![BATCH, info.tokens, info.token_dim], vec![0.2; BATCH * info.tokens * info.token_dim]);
    run(c, &format!("cond_b16/{engine}"), &gs.get(GraphKind::Cond).unwrap()[l], &[t.clone(), y.clone()]);
    run(c, &format!("forward_b16/{engine}"), &gs.get(GraphKind::Forward).unwrap()[l], &[tokens.clone(), t.clone(), y.clone()]);
    let pos = info.tokens / 2;
    run(c, &format!("step_b16_p24/{engine}"), &gs.get(GraphKind::Step).unwrap()[l], &step_inputs(model, pos, false));
    run(c, &format!("step_fixed_b16_p24/{engine}"), &gs.get(GraphKind::StepFixed).unwrap()[l], &step_inputs(model, pos, true));
    let gld = HostTensor::F32(vec![BATCH], vec![784.0; BATCH]);
    run(
        c,
        &format!("layer_vjp_b16/{engine}"),
        &gs.get(GraphKind::LayerVjp).unwrap()[l],
        &[tokens.clone(), t.clone(), y.clone(), tokens, gld],
    );
    let images = vec![-0.5; BATCH * cfg.in_channels * cfg.img_size * cfg.img_size];
    let shape = vec![BATCH, cfg.in_channels, cfg.img_size, cfg.img_size];
    run(c, &format!("score_b16/{engine}"), gs.score().unwrap(), &[HostTensor::F32(shape, images.clone()), t, y]);
    let (ts, ys) = (vec![0.1f32; BATCH], vec![3i64; BATCH]);
    c.bench_function(&format!("layerwise_score_b16/{engine}"), |b| {
        b.iter(|| black_box(sampler::score(gs, ScoreForm::Layerwise, &images, &ts, &ys, 0).unwrap()))
    });
    c.bench_function(&format!("log_prob_b16/{engine}"), |b| b.iter(|| black_box(sampler::log_prob(gs, &images, &ts, &ys, 0).unwrap())));
}

fn engines(c: &mut Criterion) {
    // As the itarflow-rt binary runs: freed memory kept for the next run (see `allocator`).
    itarflow_rt::allocator::retain_freed_memory();
    let model = Arc::new(Model::load(root().join("models/fmnist/package")).unwrap());
    let opts = ProviderOptions::default();
    let ort_available = itarflow_rt::provider::ort::environment(None).is_ok();
    let mut providers = vec![Provider::Tract];
    if ort_available {
        providers.push(Provider::Cpu);
    }
    for &p in &providers {
        let loaded = Loaded::open(model.clone(), p, Precision::Fp32, &opts).unwrap();
        with_graphs!(&loaded, g => graphs(c, p.name(), g));
    }

    // End to end: 4 images, guidance 2, 10 denoising steps.
    let labels = vec![0i64, 3, 7, 9];
    let mut group = c.benchmark_group("sample_4_images");
    group.sample_size(10);
    for &p in &providers {
        let s = Sampler::builder(model.clone()).provider(p).cfg(2.0).classes(labels.clone()).build().unwrap();
        group.bench_function(p.name(), |b| b.iter(|| black_box(s.sample(&mut |_| {}).unwrap())));
    }
    let burn = checkpoint::load(&root().join("models/fmnist/model.safetensors"), &ImportOptions::default(), &itarflow::default_device())
        .unwrap()
        .model;
    let mut bopts = options_for(&burn);
    bopts.guidance = BurnGuidance { scale: 2.0, ..BurnGuidance::default() };
    let y = itarflow::Labels::Classes(labels.clone());
    group.bench_function("burn", |b| {
        b.iter(|| {
            let x = burn_sample(&burn, seeded_noise(&burn, 4, 0), &y, &bopts, &mut |_| {});
            black_box(x.dims())
        })
    });
    group.finish();

    // Export of the reference tiny checkpoint (fp32, every graph kind).
    let tiny = checkpoint::load(
        &root().join("tests/fixtures/tiny16_c1.pth"),
        &ImportOptions { in_channels: Some(1), ..Default::default() },
        &itarflow::default_device(),
    )
    .unwrap()
    .model;
    let weights = itarflow::deploy::weights(&tiny);
    let eopts = itarflow_export::package::ExportOptions::for_model(&tiny.config);
    let dir = tempfile::tempdir().unwrap();
    c.bench_function("export_tiny_fp32", |b| {
        b.iter(|| itarflow_export::package::export(&tiny.config, &weights, &dir.path().join("pkg"), &eopts, &mut |_| {}).unwrap())
    });
}

criterion_group!(benches, engines);
criterion_main!(benches);

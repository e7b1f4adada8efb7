//! Criterion benchmarks of the engines on the demo model (models/fmnist): one phase-1 step, one
//! phase-2 score evaluation and end-to-end sampling, on tract, ONNX Runtime CPU and Burn; and the
//! export of the reference tiny checkpoint. `cargo bench --bench engines`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use itarflow::checkpoint::{self, ImportOptions};
use itarflow::sample::{Guidance as BurnGuidance, options_for, sample as burn_sample, seeded_noise};
use itarflow_base::manifest::GraphKind;
use itarflow_rt::provider::ort::{OrtDevice, OrtGraph};
use itarflow_rt::provider::tract::TractGraph;
use itarflow_rt::provider::{Engine, HostTensor};
use itarflow_rt::{Model, sampler};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The inputs of one step of the last layer (first in sampling order) at position `pos`.
fn step_inputs(model: &Model, batch: usize, pos: usize) -> Vec<HostTensor> {
    let info = model.manifest.layers.last().unwrap();
    let mut v = vec![
        HostTensor::F32(vec![batch, info.token_dim], vec![0.1; batch * info.token_dim]),
        HostTensor::I64(vec![], vec![pos as i64]),
        HostTensor::F32(vec![batch, info.width], vec![0.01; batch * info.width]),
        HostTensor::F32(vec![batch], vec![1.0; batch]),
    ];
    for _ in 0..2 * info.blocks {
        let n = batch * info.heads * pos * info.head_dim;
        v.push(HostTensor::F32(vec![batch, info.heads, pos, info.head_dim], vec![0.05; n]));
    }
    v
}

fn bench_graph<E: Engine>(c: &mut Criterion, name: &str, graph: &E, inputs: &[HostTensor]) {
    let values: Vec<E::Value> = inputs.iter().map(|t| graph.upload(t).unwrap()).collect();
    c.bench_function(name, |b| b.iter(|| black_box(graph.run_values(values.iter().collect()).unwrap())));
}

fn engines(c: &mut Criterion) {
    let model = Model::load(root().join("models/fmnist/package")).unwrap();
    let last = model.manifest.layers.len() - 1;
    let step_path = model.graph_path(GraphKind::Step, Some(last), "fp32").unwrap();
    let score_path = model.graph_path(GraphKind::Score, None, "fp32").unwrap();
    let (batch, pos) = (16, 24);
    let cfg = &model.manifest.model;
    let images = HostTensor::F32(vec![batch, 1, cfg.img_size, cfg.img_size], vec![-0.5; batch * cfg.img_size * cfg.img_size]);
    let score_in = vec![images, HostTensor::F32(vec![batch], vec![0.1; batch]), HostTensor::I64(vec![batch], vec![3; batch])];

    let tract_step = TractGraph::load(&step_path).unwrap();
    bench_graph(c, "step_b16_p24/tract", &tract_step, &step_inputs(&model, batch, pos));
    let tract_score = TractGraph::load(&score_path).unwrap();
    bench_graph(c, "score_b16/tract", &tract_score, &score_in);
    let ort_available = itarflow_rt::provider::ort::environment(None).is_ok();
    if ort_available {
        let ort_step = OrtGraph::load(&step_path, &OrtDevice::Cpu, None).unwrap();
        bench_graph(c, "step_b16_p24/ort-cpu", &ort_step, &step_inputs(&model, batch, pos));
        let ort_score = OrtGraph::load(&score_path, &OrtDevice::Cpu, None).unwrap();
        bench_graph(c, "score_b16/ort-cpu", &ort_score, &score_in);
    }

    // End to end: 4 images, guidance 2, 10 denoising steps.
    let labels = vec![0i64, 3, 7, 9];
    let info = model.manifest.layers.last().unwrap();
    let z = itarflow_base::prior_noise(0, labels.len() * info.tokens * info.token_dim);
    let mut settings = sampler::defaults(&model);
    settings.guidance.scale = 2.0;
    let mut group = c.benchmark_group("sample_4_images");
    group.sample_size(10);
    let tract = model.tract_graphs("fp32").unwrap();
    group.bench_function("tract", |b| b.iter(|| sampler::sample(&model, &tract, &z, &labels, &settings, &mut |_| {}).unwrap()));
    if ort_available {
        let ort = model.ort_graphs("fp32", &OrtDevice::Cpu, None).unwrap();
        group.bench_function("ort-cpu", |b| b.iter(|| sampler::sample(&model, &ort, &z, &labels, &settings, &mut |_| {}).unwrap()));
    }
    let burn = checkpoint::load(&root().join("models/fmnist/model.safetensors"), &ImportOptions::default(), &itarflow::default_device())
        .unwrap()
        .model;
    let mut opts = options_for(&burn);
    opts.guidance = BurnGuidance { scale: 2.0, ..BurnGuidance::default() };
    let y = itarflow::Labels::Classes(labels.clone());
    group.bench_function("burn", |b| {
        b.iter(|| {
            let x = burn_sample(&burn, seeded_noise(&burn, 4, 0), &y, &opts, &mut |_| {});
            black_box(x.dims())
        })
    });
    group.finish();

    // Export of the reference tiny checkpoint (fp32, 13 graphs).
    let tiny = checkpoint::load(
        &root().join("tests/fixtures/tiny16_c1.pth"),
        &ImportOptions { in_channels: Some(1), ..Default::default() },
        &itarflow::default_device(),
    )
    .unwrap()
    .model;
    let weights = itarflow::deploy::weights(&tiny);
    let opts = itarflow_export::package::ExportOptions::for_model(&tiny.config);
    let dir = tempfile::tempdir().unwrap();
    c.bench_function("export_tiny_fp32", |b| {
        b.iter(|| itarflow_export::package::export(&tiny.config, &weights, &dir.path().join("pkg"), &opts, &mut |_| {}).unwrap())
    });
}

criterion_group!(benches, engines);
criterion_main!(benches);

//! Bounded property tests of every parser of outside data: valid files mutated at random (bytes
//! changed, inserted or cut, header fields made huge) never make a reader panic, hang or allocate
//! without bound; they load or fail with an error. And the ONNX writer's round trip: random
//! small graphs, written by the exporter, load in tract and ONNX Runtime and agree.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::*;
use itarflow_base::{Array, Npz};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

fn config(cases: u32) -> Config {
    // Bounded case counts and a fixed seed for CI, so that a run is repeatable
    // (ITARFLOW_FUZZ_CASES=N and ITARFLOW_FUZZ_SEED=S for longer and other runs); failures are
    // reported, not written next to the sources.
    let env = |k: &str| std::env::var(k).ok().and_then(|n| n.parse::<u64>().ok());
    let cases = env("ITARFLOW_FUZZ_CASES").map_or(cases, |n| n as u32);
    let seed = env("ITARFLOW_FUZZ_SEED").unwrap_or(20_261_204);
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

/// A mutation of a file: byte edits, an insertion, a cut.
#[derive(Debug, Clone)]
struct Mutation {
    edits: Vec<(usize, u8)>,
    insert: Option<(usize, Vec<u8>)>,
    cut: Option<usize>,
}

fn mutation(head: usize) -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((0..head, any::<u8>()), 0..8),
        prop::option::of((0..head, prop::collection::vec(any::<u8>(), 1..16))),
        prop::option::of(0..head * 4),
    )
        .prop_map(|(edits, insert, cut)| Mutation { edits, insert, cut })
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(i, v) in &m.edits {
        if i < b.len() {
            b[i] = v;
        }
    }
    if let Some((i, extra)) = &m.insert {
        let i = (*i).min(b.len());
        b.splice(i..i, extra.iter().copied());
    }
    if let Some(n) = m.cut {
        b.truncate(n.min(b.len()));
    }
    b
}

/// Runs `parse` on the mutated file at `path`; a panic fails the property.
fn survives<T, E: std::fmt::Display>(path: &Path, bytes: &[u8], parse: impl FnOnce(&Path) -> Result<T, E>) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    match catch_unwind(AssertUnwindSafe(|| parse(path).map(|_| ()).map_err(|e| e.to_string()))) {
        Ok(_) => Ok(()),
        Err(_) => Err(TestCaseError::fail(format!("the parser panicked on {} bytes", bytes.len()))),
    }
}

fn npz_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("seed.npz");
    let mut npz = Npz::new(&path);
    npz.insert("x", Array::f32(&[2, 3], vec![0.5; 6]));
    npz.insert("y", Array::i64(&[2], vec![1, -1]));
    npz.write().unwrap();
    std::fs::read(path).unwrap()
}

/// An .npy header and body (v1) with the given shape text and body length.
fn npy(shape: &str, body: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, body));
    b
}

#[test]
fn the_harness_fails_a_parser_that_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let caught = survives(&tmp.path().join("f"), b"x", |_| -> Result<(), String> { panic!("a parser bug") });
    assert!(caught.is_err());
    assert!(survives(&tmp.path().join("f"), b"x", |_| -> Result<(), String> { Err("refused".into()) }).is_ok());
}

#[test]
fn headers_claiming_huge_sizes_are_errors_not_allocations() {
    for shape in ["(1000000000000,)", "(4294967296, 4294967296)", "(18446744073709551615, 2)"] {
        let e = Array::from_npy(&npy(shape, 16)).expect_err(shape);
        assert!(e.contains("truncated") || e.contains("overflows"), "{shape}: {e}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut images = vec![0, 0, 8, 3];
    for d in [u32::MAX, u32::MAX, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend([0u8; 64]);
    let path = tmp.path().join("train-images-idx3-ubyte");
    std::fs::write(&path, images).unwrap();
    let e = itarflow::data::idx::read_images(&path).unwrap_err().to_string();
    assert!(e.contains("header promises"), "{e}");
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn npy_arrays_and_npz_archives(m in mutation(200), shape in "\\((0|1|7|99999999999|18446744073709551615)(, (0|3|65536))?,?\\)") {
        let tmp = tempfile::tempdir().unwrap();
        let seed = npz_bytes(tmp.path());
        survives(&tmp.path().join("m.npz"), &apply(&seed, &m), |p| Npz::read(p))?;
        let raw = apply(&npy(&shape, 64), &m);
        prop_assert!(catch_unwind(|| Array::from_npy(&raw).map(|_| ())).is_ok(), "from_npy panicked on {shape}");
    }

    #[test]
    fn manifests_and_packages(m in mutation(600)) {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("pkg");
        let src = fixture_package();
        copy_dir(&src, &pkg);
        let manifest = std::fs::read(src.join("manifest.json")).unwrap();
        survives(&pkg.join("manifest.json"), &apply(&manifest, &m), |_| itarflow_rt::Model::load(&pkg))?;
        std::fs::write(pkg.join("manifest.json"), &manifest).unwrap();
        let prior = std::fs::read(src.join("prior.npz")).unwrap();
        survives(&pkg.join("prior.npz"), &apply(&prior, &m), |_| itarflow_rt::Model::load(&pkg))?;
    }

    #[test]
    fn checkpoints(m in mutation(4096)) {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["tiny16_c1.safetensors", "tiny16_c1.pth"] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            let opts = itarflow::checkpoint::ImportOptions { in_channels: Some(1), ..Default::default() };
            survives(&tmp.path().join(name), &apply(&bytes, &m), |p| itarflow::checkpoint::load(p, &opts, &device()))?;
        }
    }

    #[test]
    fn idx_and_cifar_files(m in mutation(64), gzip in any::<bool>()) {
        let tmp = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3];
        for d in [3u32, 4, 4] {
            images.extend(d.to_be_bytes());
        }
        images.extend(0..48u8);
        let mut bytes = apply(&images, &m);
        if gzip {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            bytes = apply(&e.finish().unwrap(), &Mutation { edits: m.edits.iter().map(|&(i, v)| (i / 2, v)).take(1).collect(), insert: None, cut: None });
        }
        survives(&tmp.path().join("train-images-idx3-ubyte"), &bytes, itarflow::data::idx::read_images)?;
        let cifar = tmp.path().join("cifar");
        std::fs::create_dir_all(&cifar).unwrap();
        let record: Vec<u8> = std::iter::once(3u8).chain((0..3072).map(|i| (i % 251) as u8)).collect();
        survives(&cifar.join("test_batch.bin"), &apply(&record, &m), |_| itarflow::data::cifar::load_split(&cifar, itarflow::data::Split::Test))?;
        // An image folder with one PNG per class.
        let folder = tmp.path().join("folder");
        for class in ["a", "b"] {
            std::fs::create_dir_all(folder.join(class)).unwrap();
            image::GrayImage::from_fn(6, 5, |x, y| image::Luma([(x * 40 + y * 9) as u8])).save(folder.join(class).join("0.png")).unwrap();
        }
        let png = std::fs::read(folder.join("a/0.png")).unwrap();
        survives(&folder.join("a/0.png"), &apply(&png, &m), |_| itarflow::data::folder::load(&folder, 4, 1))?;
    }
}

/// The tiny reference checkpoint's package (exported once per test process).
fn fixture_package() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny(false);
        let opts = itarflow_export::package::ExportOptions::for_model(&m.config);
        itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), &dir.path().join("pkg"), &opts, &mut |_| {}).unwrap();
        dir
    })
    .path()
    .join("pkg")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

mod onnx_round_trip {
    //! Random chains of the IR's ops on random shapes, written by the exporter: tract and ONNX
    //! Runtime load every one and agree.

    use super::*;
    use itarflow_export::ir::{ConstData, DType, Dim, Graph, V};
    use itarflow_export::ops::{Red, Un};
    use itarflow_rt::HostTensor;
    use itarflow_rt::provider::ort::{OrtDevice, OrtGraph};
    use itarflow_rt::provider::run_host;
    use itarflow_rt::provider::tract::TractGraph;

    /// Builds a graph from `ops` (each applied to the running value) on an input (2, rows, cols).
    fn build(rows: usize, cols: usize, ops: &[u8], weights: &[f32]) -> Graph {
        let mut g = Graph::new("fuzz");
        let x = g.input("x", DType::F32, vec![Dim::sym("N"), Dim::N(rows), Dim::N(cols)]);
        let mut v: V = x;
        let mut width = cols;
        let mut w = weights.iter().copied().cycle();
        for (k, &op) in ops.iter().enumerate() {
            v = match op % 9 {
                0 => {
                    let c = row(&mut g, width, &mut w);
                    g.plus(v, c)
                }
                1 => {
                    let c = row(&mut g, width, &mut w);
                    g.times(v, c)
                }
                2 => g.unary(Un::Neg, v),
                3 => {
                    let t = g.unary(Un::Erf, v);
                    g.plus(t, v)
                }
                4 => g.softmax(v, 2),
                5 => {
                    let out = 1 + (k % 5);
                    let m = g.constant(Some(&format!("w{k}")), ConstData::F32(w.by_ref().take(width * out).collect()), &[width, out]);
                    width = out;
                    g.matmul(v, m)
                }
                6 => {
                    let s = g.constant(Some(&format!("s{k}")), ConstData::F32(vec![1.0; width]), &[width]);
                    let b = g.constant(Some(&format!("b{k}")), ConstData::F32(vec![0.1; width]), &[width]);
                    // A ramp keeps the rows' variance well above LayerNorm's epsilon: a row of
                    // rounding noise (two engines' different roundings of a cancellation) would be
                    // scaled by 1 / sqrt(1e-5) into different O(1) outputs.
                    let ramp = g.constant(None, ConstData::F32((0..width).map(|i| i as f32).collect()), &[width]);
                    let v = g.plus(v, ramp);
                    g.layer_norm(v, s, b, 1e-5)
                }
                7 => {
                    let m = g.reduce(Red::Mean, v, &[2]);
                    g.minus(v, m)
                }
                _ => {
                    let t = g.transpose(v, vec![0, 2, 1]);
                    g.transpose(t, vec![0, 2, 1])
                }
            };
        }
        g.output(v, "y");
        g
    }

    /// A constant row of `width` values, broadcast over the value's rows.
    fn row(g: &mut Graph, width: usize, w: &mut impl Iterator<Item = f32>) -> V {
        g.constant(None, ConstData::F32(w.take(width).collect()), &[width])
    }

    proptest! {
        #![proptest_config(config(48))]

        #[test]
        fn written_graphs_load_in_both_engines_and_agree(
            rows in 1usize..5,
            cols in 1usize..7,
            ops in prop::collection::vec(any::<u8>(), 1..10),
            weights in prop::collection::vec(-1.0f32..1.0, 1..64),
            input in prop::collection::vec(-2.0f32..2.0, 64),
        ) {
            let g = build(rows, cols, &ops, &weights);
            prop_assert!(g.check().is_ok(), "{:?}", g.check());
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("g.onnx");
            itarflow_export::onnx::save(&g, &path, itarflow_export::onnx::DEFAULT_OPSET, None).unwrap();
            let x: Vec<f32> = input.iter().copied().cycle().take(2 * rows * cols).collect();
            let feeds = [HostTensor::F32(vec![2, rows, cols], x)];
            let tract = run_host(&TractGraph::load(&path).unwrap(), &feeds).unwrap().remove(0).into_f32().unwrap();
            let ort = OrtGraph::load(&path, &OrtDevice::Cpu, None).expect("ONNX Runtime (scripts/setup.sh)");
            let ort = run_host(&ort, &feeds).unwrap().remove(0).into_f32().unwrap();
            // 1e-3: a LayerNorm over a near-constant row divides rounding differences by
            // sqrt(1e-5); a wrong lowering (axis, layout, operand order) is off by O(1).
            let e = rel_err(&tract, &ort);
            prop_assert!(e < 1e-3 || tract.iter().chain(&ort).all(|v| v.abs() < 1e-6), "tract and ONNX Runtime differ by {e:.2e} on ops {ops:?}");
        }
    }
}

//! Helpers shared by the integration tests: fixtures, tensors from npz arrays, error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use itarflow::checkpoint::{self, ImportOptions};
use itarflow::{ITarFlow, Labels};
use itarflow_base::Npz;

/// This crate's directory, as `cargo test` says when it runs the test (a test binary built in
/// another checkout sharing the target directory, and reused by cargo, would point there with
/// the compile-time `env!`).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

pub fn device() -> Device {
    itarflow::default_device()
}

/// The reference vectors of the tiny checkpoint.
pub fn vectors() -> Npz {
    Npz::read(fixture("tiny16_c1_vectors.npz")).expect("reference vectors load")
}

/// The reference tiny checkpoint (from the .pth unless `safetensors`).
pub fn tiny(safetensors: bool) -> ITarFlow {
    let name = if safetensors { "tiny16_c1.safetensors" } else { "tiny16_c1.pth" };
    let opts = ImportOptions { in_channels: Some(1), ..Default::default() };
    checkpoint::load(&fixture(name), &opts, &device()).expect("reference checkpoint loads").model
}

/// (shape, data) of a float array.
pub fn array(npz: &Npz, name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = npz.get(name).unwrap_or_else(|| panic!("no array {name}"));
    npz.f32(name, a.shape.len(), "", "").unwrap()
}

pub fn tensor<const D: usize>(npz: &Npz, name: &str) -> Tensor<D> {
    let (shape, data) = array(npz, name);
    let shape: [usize; D] = shape.try_into().expect("rank");
    Tensor::from_data(TensorData::new(data, shape), &device())
}

/// A float array reshaped to D dims (e.g. t (4,1) as (4,)).
pub fn tensor_as<const D: usize>(npz: &Npz, name: &str, shape: [usize; D]) -> Tensor<D> {
    let (_, data) = array(npz, name);
    Tensor::from_data(TensorData::new(data, shape), &device())
}

pub fn labels(npz: &Npz, name: &str) -> Labels {
    Labels::Classes(npz.i64(name, 1, "(B,)", "").unwrap().1)
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

/// max|ours - ref| / max|ref| over the array: `itarflow_base::check::errors`, the measure
/// `itarflow-rt check` uses (infinite when either side holds a NaN or Inf).
pub fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "array sizes differ");
    itarflow_base::check::errors(ours, reference).1
}

/// max|a - b| over two arrays (infinite when either holds a NaN or Inf).
pub fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "array sizes differ");
    itarflow_base::check::errors(a, b).0
}

/// Asserts the relative error of `ours` against reference array `name` is within `tol`, and
/// prints it (run with --nocapture to collect the figures).
pub fn check<const D: usize>(npz: &Npz, name: &str, ours: Tensor<D>, tol: f64) -> f64 {
    let (_, reference) = array(npz, name);
    let e = rel_err(&values(ours), &reference);
    println!("rel_err {name:<28} {e:.3e}");
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.0e}");
    e
}

/// A model of shape `config` with every tensor perturbed by 0.02 N(0, 1) (so that no layer is the
/// identity, as in the reference test checkpoint) and a positive random prior variance.
pub fn random_model(config: &itarflow::ModelConfig, seed: u64) -> ITarFlow {
    use itarflow::checkpoint::{NamedTensors, RawTensor, names};
    let fresh = ITarFlow::new(config, &device()).expect("valid config");
    let mut noise = itarflow_base::GaussianNoise::new(seed);
    let tensors = names::to_named(&fresh)
        .into_iter()
        .map(|(name, t)| {
            let data = if name == "var" {
                t.data.iter().map(|_| (0.5 + 0.2 * noise.next_f64().abs()) as f32).collect()
            } else if name.ends_with("attn_mask") {
                t.data
            } else {
                t.data.iter().map(|&x| x + 0.02 * noise.next_f64() as f32).collect()
            };
            (name, RawTensor { shape: t.shape, data })
        })
        .collect();
    let named = NamedTensors { tensors, ..Default::default() };
    names::from_named(&named, config, &device()).expect("perturbed model builds")
}

/// Gaussian values of the given shape.
pub fn gaussian<const D: usize>(shape: [usize; D], seed: u64, scale: f32) -> Tensor<D> {
    let n = shape.iter().product();
    let data = itarflow_base::GaussianNoise::new(seed).sample_f32(n).into_iter().map(|x| x * scale).collect::<Vec<_>>();
    Tensor::from_data(TensorData::new(data, shape), &device())
}

/// max|x| over a tensor (infinite when it holds a NaN or Inf).
pub fn max_abs(t: Tensor<4>) -> f64 {
    let v = values(t);
    max_diff(&v, &vec![0.0; v.len()])
}

//! Burn's GPU backend against the PyTorch reference vectors and against Flex: forward, likelihood,
//! score, guided inversion, denoising, and the parameter gradients training takes. Built with
//! `--features vulkan` (the Vulkan device, cubecl's SPIR-V kernels) or `--features wgpu` (the wgpu
//! device, WGSL kernels through naga; the vulkan device when both are on). It needs a GPU driver or
//! Mesa's lavapipe on a CPU, and fails, naming the missing driver, without one.
#![cfg(any(feature = "vulkan", feature = "wgpu"))]

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use common::*;
use itarflow::DeviceKind;
use itarflow::checkpoint::{self, ImportOptions};
use itarflow::sample::{CfgStyle, Guidance, SampleOptions, denoise, reverse};

const TOL: f64 = 1e-4;

/// Makes the GPU device of this build the tests' `device()`.
fn on_vulkan() {
    let kind = if cfg!(feature = "vulkan") { DeviceKind::Vulkan } else { DeviceKind::Wgpu };
    itarflow::device::select(kind).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn forward_score_inversion_and_denoising_match_the_reference_on_vulkan() {
    on_vulkan();
    let v = vectors();
    let model = tiny(false);
    let x: Tensor<4> = tensor(&v, "x");
    let t: Tensor<1> = tensor_as(&v, "t", [4]);
    let y = labels(&v, "y");
    let fwd = model.forward(x.clone(), t.clone(), &y);
    check(&v, "z", fwd.z.clone(), TOL);
    check(&v, "logdets", fwd.logdet.clone(), TOL);
    let lik = model.likelihood(&fwd);
    check(&v, "loss_per_sample", lik.loss, TOL);
    let (score, logp) = model.score(x, t, &y);
    check(&v, "score", score, TOL);
    check(&v, "logp", logp, TOL);

    let (_, rev_t) = array(&v, "rev_t");
    let guided = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    check(&v, "rev_g2", reverse(&model, tensor(&v, "rev_z"), rev_t[0] as f64, &y, &guided, &mut |_| {}), TOL);

    let opts = SampleOptions { guidance: Guidance::default(), t_max: 0.3, t_min: 0.01, denoise_steps: 10, clip: false, denoise_batch: 3 };
    check(&v, "itd_x_final", denoise(&model, tensor(&v, "itd_x_init"), &y, &opts, &mut |_| {}), TOL);
}

/// Every parameter's gradient, flattened in visiting order.
struct CollectGrads<'a> {
    grads: &'a burn::tensor::Gradients,
    values: Vec<f32>,
    missing: usize,
}

impl ModuleVisitor for CollectGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match param.val().grad(self.grads) {
            Some(g) => self.values.extend(g.try_into_vec_as::<f32>().expect("f32 gradient")),
            None => self.missing += 1,
        }
    }
}

/// The gradients of the t-weighted training loss of the reference batch with respect to every
/// parameter, computed on `device`.
fn parameter_gradients(device: &Device) -> (Vec<f32>, usize) {
    let v = vectors();
    let opts = ImportOptions { in_channels: Some(1), ..Default::default() };
    let ad = device.clone().autodiff();
    let model = checkpoint::load(&fixture("tiny16_c1.pth"), &opts, &ad).expect("reference checkpoint loads").model;
    let (shape, x) = array(&v, "x");
    let (_, t) = array(&v, "t");
    let x = Tensor::<4>::from_data(TensorData::new(x, [shape[0], shape[1], shape[2], shape[3]]), &ad);
    let t = Tensor::<1>::from_data(TensorData::new(t, [shape[0]]), &ad);
    let loss = model.likelihood(&model.forward(x, t.clone(), &labels(&v, "y"))).loss;
    let grads = (loss * t).mean().backward();
    let mut collect = CollectGrads { grads: &grads, values: Vec::new(), missing: 0 };
    model.visit(&mut collect);
    (collect.values, collect.missing)
}

#[test]
fn parameter_gradients_on_vulkan_match_flex() {
    on_vulkan();
    let (flex, flex_missing) = parameter_gradients(&Device::flex());
    let (vulkan, vulkan_missing) = parameter_gradients(&itarflow::default_device());
    assert_eq!(flex_missing, vulkan_missing, "the same parameters get gradients");
    assert!(flex.len() > 10_000, "the tiny model has {} gradient entries", flex.len());
    assert!(flex.iter().any(|g| *g != 0.0));
    let e = rel_err(&vulkan, &flex);
    println!("rel_err parameter gradients vulkan vs flex {e:.3e} over {} values", flex.len());
    assert!(e <= TOL, "parameter gradients: relative error {e:.3e} > {TOL:.0e}");
}

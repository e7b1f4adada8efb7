//! The runtime flushes subnormals to zero only while an engine computes: the thread that loads a
//! package and samples from it keeps its floating-point mode. ONNX Runtime sets flush-to-zero for
//! good on the thread that creates its first session in a process, so this test has a binary of
//! its own (the first session is made here).
#![cfg(target_arch = "x86_64")]

mod common;

use std::sync::Arc;

use common::*;
use itarflow_rt::{Model, Provider, Sampler};

fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: STMXCSR stores the SSE control/status register into the 4 bytes at the pointer.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

/// MXCSR's mode bits (rounding, exception masks, FTZ, DAZ), without the sticky exception flags.
fn mode() -> u32 {
    mxcsr() & !0x3f
}

#[test]
fn loading_and_sampling_leave_the_callers_floating_point_mode_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let m = tiny(false);
    let opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), &dir, &opts, &mut |_| {}).unwrap();
    let model = Arc::new(Model::load(&dir).unwrap());
    let before = mode();
    assert_eq!(before & ((1 << 15) | (1 << 6)), 0, "the test thread starts without FTZ/DAZ");
    for provider in [Provider::Cpu, Provider::Tract] {
        let sampler = Sampler::builder(model.clone())
            .provider(provider)
            .denoise_steps(2)
            .build()
            .unwrap_or_else(|e| panic!("{provider}: {e} (ONNX Runtime comes from scripts/setup.sh)"));
        assert_eq!(mode(), before, "{provider}: loading changed the caller's floating-point mode");
        let out = sampler.sample_from(&itarflow_base::prior_noise(2, 2 * model.noise_len()), &[1, 4], &mut |_| {}).unwrap();
        assert!(out.images.iter().all(|v| v.is_finite()));
        assert_eq!(mode(), before, "{provider}: sampling changed the caller's floating-point mode");
    }
}

//! The Burn-free runtime on an exported package of the reference checkpoint: phase 1 with and
//! without guidance and the 10-step denoiser reproduce the reference through tract.

mod common;

use common::*;
use itarflow_rt::Model;
use itarflow_rt::sampler::{self, CfgStyle, Guidance, SampleSettings};

fn package(dir: &std::path::Path) -> Model {
    let m = tiny(false);
    let opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), dir, &opts, &mut |_| {}).unwrap();
    Model::load(dir).unwrap()
}

fn settings(guidance: Guidance) -> SampleSettings {
    SampleSettings { guidance, t_max: 0.3, t_min: 0.01, denoise_steps: 10, clip: false, denoise_batch: 3 }
}

#[test]
fn runtime_reproduces_reference_reverse_and_denoising_on_tract() {
    let v = vectors();
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let graphs = model.tract_graphs("fp32").unwrap();
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let all = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    for (name, g) in [
        ("rev_g0", Guidance::default()),
        ("rev_g2", all),
        ("rev_g2_anneal", Guidance { annealed: true, ..all }),
        ("rev_g2_anneal_gf1", Guidance { annealed: true, layers: 1, ..all }),
    ] {
        let x = sampler::invert(&model, &graphs, &z, &y, &settings(g), &mut |_| {}).unwrap();
        let e = rel_err(&x, &array(&v, name).1);
        println!("runtime (tract) {name:<18} {e:.2e}");
        assert!(e < 1e-4, "{name}: {e:.2e}");
    }
    let (_, mut x) = array(&v, "itd_x_init");
    sampler::denoise(&model, &graphs.score, &mut x, &y, &settings(Guidance::default()), &mut |_| {}).unwrap();
    let e = rel_err(&x, &array(&v, "itd_x_final").1);
    println!("runtime (tract) itd_x_final        {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
}

#[test]
fn seeded_runtime_samples_match_the_burn_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = package(&tmp.path().join("pkg"));
    let graphs = rt.tract_graphs("fp32").unwrap();
    let burn_model = tiny(false);
    let labels = vec![1i64, 7, 3];
    let z = itarflow_base::prior_noise(42, 3 * 64 * 4);
    let g = Guidance { scale: 1.5, ..Guidance::default() };
    let ours = sampler::sample(&rt, &graphs, &z, &labels, &settings(g), &mut |_| {}).unwrap();
    let opts = itarflow::sample::SampleOptions {
        guidance: itarflow::sample::Guidance { scale: 1.5, ..Default::default() },
        t_max: 0.3,
        t_min: 0.01,
        denoise_steps: 10,
        clip: false,
        denoise_batch: 3,
    };
    let zt = itarflow::sample::seeded_noise(&burn_model, 3, 42);
    let burn = itarflow::sample::sample(&burn_model, zt, &itarflow::Labels::Classes(labels), &opts, &mut |_| {});
    let e = rel_err(&ours, &values::<4>(burn));
    println!("runtime vs Burn sampler, seeded, cfg 1.5: {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
}

#[test]
fn runtime_reproduces_reference_on_onnx_runtime_cpu() {
    use itarflow_rt::provider::ort::OrtDevice;
    let v = vectors();
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let graphs = model.ort_graphs("fp32", &OrtDevice::Cpu, None).expect("ONNX Runtime (pip install onnxruntime==1.31.1, as scripts/setup.sh does)");
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let all = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    for (name, g) in [("rev_g0", Guidance::default()), ("rev_g2", all), ("rev_g2_anneal_gf1", Guidance { annealed: true, layers: 1, ..all })] {
        let x = sampler::invert(&model, &graphs, &z, &y, &settings(g), &mut |_| {}).unwrap();
        let e = rel_err(&x, &array(&v, name).1);
        println!("runtime (ort cpu) {name:<18} {e:.2e}");
        assert!(e < 1e-4, "{name}: {e:.2e}");
    }
    let (_, mut x) = array(&v, "itd_x_init");
    sampler::denoise(&model, &graphs.score, &mut x, &y, &settings(Guidance::default()), &mut |_| {}).unwrap();
    let e = rel_err(&x, &array(&v, "itd_x_final").1);
    println!("runtime (ort cpu) itd_x_final        {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
}

/// The `itarflow-rt` binary beside this test's (built by `cargo test --workspace`).
fn rt_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("itarflow-rt");
    assert!(bin.exists(), "{} is not built: run the tests with `cargo test --release --workspace`", bin.display());
    bin
}

#[test]
fn gpu_providers_requested_on_a_cpu_build_fail_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    for provider in ["cuda", "tensorrt"] {
        let out = std::process::Command::new(rt_binary())
            .args(["sample", "--model", dir.to_str().unwrap(), "--provider", provider, "--num", "1", "--out"])
            .arg(tmp.path().join("never.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{provider} ran on a machine without it");
        assert!(err.contains(&format!("provider {provider}")) && err.contains("not enabled in this build"), "{err}");
        assert!(!tmp.path().join("never.png").exists());
    }
    let out = std::process::Command::new(rt_binary())
        .args(["sample", "--model", dir.to_str().unwrap(), "--provider", "auto", "--num", "1", "--out"])
        .arg(tmp.path().join("auto.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("auto: using cpu") && err.contains("skipped tensorrt") && err.contains("skipped cuda"), "{err}");
}

#[test]
fn score_and_denoise_subcommands_reproduce_the_reference() {
    let v = vectors();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    let input = tmp.path().join("in.npz");
    let mut npz = itarflow_base::Npz::new(&input);
    for name in ["x", "t", "y"] {
        npz.insert(name, v.get(name).unwrap().clone());
    }
    npz.write().unwrap();
    let out = tmp.path().join("score.npz");
    for provider in ["tract", "cpu"] {
        let run = std::process::Command::new(rt_binary())
            .args(["score", "--model", dir.to_str().unwrap(), "--provider", provider, "--input"])
            .args([input.as_os_str(), "--output".as_ref(), out.as_os_str()])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let got = itarflow_base::Npz::read(&out).unwrap();
        for (ours, theirs) in [("score", "score"), ("logp", "logp")] {
            let e = rel_err(&array(&got, ours).1, &array(&v, theirs).1);
            println!("itarflow-rt score ({provider}) {ours}: {e:.2e}");
            assert!(e < 1e-4, "{provider} {ours}: {e:.2e}");
        }
    }
    let input = tmp.path().join("noisy.npz");
    let mut npz = itarflow_base::Npz::new(&input);
    npz.insert("x", v.get("itd_x_init").unwrap().clone());
    npz.insert("y", v.get("y").unwrap().clone());
    npz.write().unwrap();
    let out = tmp.path().join("clean.npz");
    let run = std::process::Command::new(rt_binary())
        .args(["denoise", "--model", dir.to_str().unwrap(), "--t-max", "0.3", "--t-min", "0.01", "--steps", "10", "--input"])
        .args([input.as_os_str(), "--output".as_ref(), out.as_os_str()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let e = rel_err(&array(&itarflow_base::Npz::read(&out).unwrap(), "x").1, &array(&v, "itd_x_final").1);
    assert!(e < 1e-4, "denoise: {e:.2e}");
}

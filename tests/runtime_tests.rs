//! The Burn-free runtime on an exported package of the reference checkpoint: phase 1 with and
//! without guidance (both KV caches) and the 10-step denoiser (both score forms) reproduce the
//! reference through tract and ONNX Runtime; seeded samples match the Burn sampler; NaN samples
//! are reported or retried; and the `itarflow-rt` subcommands, `check` and `bench` included.

mod common;

use std::sync::Arc;

use common::*;
use itarflow_rt::sampler::{CfgStyle, Guidance};
use itarflow_rt::{Model, OnNonFinite, Provider, ProviderOptions, RtError, Sampler, ScoreForm, StepCache};

fn package(dir: &std::path::Path) -> Arc<Model> {
    let m = tiny(false);
    let mut opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    opts.reference = itarflow::deploy::reference(&m, 3, 0.15, 1);
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), dir, &opts, &mut |_| {}).unwrap();
    Arc::new(Model::load(dir).unwrap())
}

/// A sampler with the reference's settings: t 0.3 -> 0.01, 10 steps, score batches of 3.
fn sampler(model: &Arc<Model>, provider: Provider, g: Guidance, cache: StepCache, form: ScoreForm) -> Sampler {
    Sampler::builder(model.clone())
        .provider(provider)
        .cfg(g.scale)
        .cfg_style(g.style)
        .guide_layers(g.layers)
        .annealed(g.annealed)
        .t_max(0.3)
        .t_min(0.01)
        .denoise_steps(10)
        .score_batch(3)
        .step_cache(cache)
        .score_form(form)
        .build()
        .unwrap_or_else(|e| panic!("{provider}: {e} (ONNX Runtime comes from scripts/setup.sh)"))
}

fn images(v: &itarflow_base::Npz, name: &str) -> ndarray::Array4<f32> {
    let (shape, x) = array(v, name);
    ndarray::Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), x).unwrap()
}

/// Phase 1 (denoise_steps 0) against rev_*, then phase 2 against itd_x_final.
fn reproduces_reference(provider: Provider) {
    let v = vectors();
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let all = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    // The step graphs with either cache, and the fused inversion graphs run as loops.
    for (cache, resident) in [(StepCache::Growing, false), (StepCache::Fixed, false), (StepCache::Fixed, true)] {
        for (name, g) in [
            ("rev_g0", Guidance::default()),
            ("rev_g2", all),
            ("rev_g2_anneal", Guidance { annealed: true, ..all }),
            ("rev_g2_anneal_gf1", Guidance { annealed: true, layers: 1, ..all }),
        ] {
            let s = Sampler::builder(model.clone())
                .provider(provider)
                .cfg(g.scale)
                .guide_layers(g.layers)
                .annealed(g.annealed)
                .t_max(0.3)
                .denoise_steps(0)
                .step_cache(cache)
                .resident(resident)
                .build()
                .unwrap();
            let x = s.sample_from(&z, &y, &mut |_| {}).unwrap().images;
            let e = rel_err(x.as_slice().unwrap(), &array(&v, name).1);
            let how = if resident { "loop".to_string() } else { format!("{cache:?} cache") };
            println!("runtime ({provider}, {how}) {name:<18} {e:.2e}");
            assert!(e < 1e-4, "{provider} {how} {name}: {e:.2e}");
        }
    }
    // Starflow guidance: the fused graphs' combination against the host's (step graphs).
    let starflow = Guidance { style: CfgStyle::Starflow, annealed: true, ..all };
    let run = |resident: bool| {
        let s = Sampler::builder(model.clone())
            .provider(provider)
            .cfg(starflow.scale)
            .cfg_style(starflow.style)
            .guide_layers(starflow.layers)
            .annealed(true)
            .uncond_temperature(1.3)
            .t_max(0.3)
            .denoise_steps(0)
            .resident(resident)
            .build()
            .unwrap();
        s.sample_from(&z, &y, &mut |_| {}).unwrap().images
    };
    let e = rel_err(run(true).as_slice().unwrap(), run(false).as_slice().unwrap());
    println!("runtime ({provider}) starflow, annealed, T_u 1.3: loop vs steps {e:.2e}");
    assert!(e < 1e-5, "starflow loop vs steps: {e:.2e}");
    // Phase 2 as a loop of the denoising-step graph, with and without clipping.
    let s = Sampler::builder(model.clone())
        .provider(provider)
        .t_max(0.3)
        .t_min(0.01)
        .denoise_steps(10)
        .score_batch(3)
        .resident(true)
        .build()
        .unwrap();
    let x = s.denoise(images(&v, "itd_x_init").view(), &y, &mut |_| {}).unwrap();
    let e = rel_err(x.as_slice().unwrap(), &array(&v, "itd_x_final").1);
    println!("runtime ({provider}, denoising loop) itd_x_final {e:.2e}");
    assert!(e < 1e-4, "{provider} denoising loop: {e:.2e}");
    let clipped = |resident: bool| {
        let s = Sampler::builder(model.clone()).provider(provider).t_max(0.3).t_min(0.01).denoise_steps(4).score_batch(2).clip(true);
        s.resident(resident).build().unwrap().denoise(images(&v, "itd_x_init").view(), &y, &mut |_| {}).unwrap()
    };
    let e = rel_err(clipped(true).as_slice().unwrap(), clipped(false).as_slice().unwrap());
    assert!(e < 1e-5, "clipped denoising loop vs host: {e:.2e}");
    for form in [ScoreForm::Whole, ScoreForm::Layerwise] {
        let s = sampler(&model, provider, Guidance::default(), StepCache::Growing, form);
        let x = s.denoise(images(&v, "itd_x_init").view(), &y, &mut |_| {}).unwrap();
        let e = rel_err(x.as_slice().unwrap(), &array(&v, "itd_x_final").1);
        println!("runtime ({provider}, {form:?} score) itd_x_final {e:.2e}");
        assert!(e < 1e-4, "{provider} {form:?}: {e:.2e}");
        let (score, logp) = s.score(images(&v, "x").view(), &array(&v, "t").1, &y).unwrap();
        assert!(rel_err(score.as_slice().unwrap(), &array(&v, "score").1) < 1e-4, "{form:?} score");
        assert!(rel_err(logp.as_slice().unwrap(), &array(&v, "logp").1) < 1e-4, "{form:?} logp");
    }
    let s = sampler(&model, provider, Guidance::default(), StepCache::Growing, ScoreForm::Whole);
    let logp = s.log_prob(images(&v, "x").view(), &array(&v, "t").1, &y).unwrap();
    let e = rel_err(logp.as_slice().unwrap(), &array(&v, "logp").1);
    println!("runtime ({provider}) log_prob through the forward graphs {e:.2e}");
    assert!(e < 1e-4, "log_prob {e:.2e}");
}

#[test]
fn runtime_reproduces_reference_on_tract() {
    reproduces_reference(Provider::Tract);
}

#[test]
fn runtime_reproduces_reference_on_onnx_runtime_cpu() {
    reproduces_reference(Provider::Cpu);
}

/// The GPU's code path on ONNX Runtime CPU: every run bound through IoBinding with outputs in the
/// provider's memory, and the loops in double buffers of their own (copied in, alternated, reused
/// by later loops of the same shapes).
#[test]
fn onnx_runtime_through_io_binding_and_loop_buffers_reproduces_the_reference() {
    let v = vectors();
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let opts = ProviderOptions { io_binding: true, ..ProviderOptions::default() };
    let all = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    for resident in [true, false] {
        for (name, g) in
            [("rev_g0", Guidance::default()), ("rev_g2", all), ("rev_g2_anneal_gf1", Guidance { annealed: true, layers: 1, ..all })]
        {
            let s = Sampler::builder(model.clone())
                .provider(Provider::Cpu)
                .provider_options(opts.clone())
                .cfg(g.scale)
                .guide_layers(g.layers)
                .annealed(g.annealed)
                .t_max(0.3)
                .denoise_steps(0)
                .resident(resident)
                .build()
                .unwrap();
            // Twice: the second run reuses the first's loop buffers.
            for run in 0..2 {
                let x = s.sample_from(&z, &y, &mut |_| {}).unwrap().images;
                let e = rel_err(x.as_slice().unwrap(), &array(&v, name).1);
                println!("io binding (resident {resident}, run {run}) {name:<18} {e:.2e}");
                assert!(e < 1e-4, "resident {resident} run {run} {name}: {e:.2e}");
            }
        }
    }
    let s = Sampler::builder(model.clone()).provider(Provider::Cpu).provider_options(opts).t_max(0.3).t_min(0.01).denoise_steps(10);
    let s = s.score_batch(3).resident(true).build().unwrap();
    for images_in in [4, 2, 4] {
        // Loops of two shapes in turn (a full batch of 3 and a last batch of 1 or 2).
        let x0 = images(&v, "itd_x_init");
        let x0 = x0.slice(ndarray::s![..images_in, .., .., ..]);
        let x = s.denoise(x0, &y[..images_in], &mut |_| {}).unwrap();
        let want = array(&v, "itd_x_final").1;
        let e = rel_err(x.as_slice().unwrap(), &want[..x.len()]);
        println!("io binding, denoising loop, {images_in} images: itd_x_final {e:.2e}");
        assert!(e < 1e-4, "denoising loop through io binding: {e:.2e}");
    }
    let (score, logp) = s.score(images(&v, "x").view(), &array(&v, "t").1, &y).unwrap();
    assert!(rel_err(score.as_slice().unwrap(), &array(&v, "score").1) < 1e-4);
    assert!(rel_err(logp.as_slice().unwrap(), &array(&v, "logp").1) < 1e-4);
}

#[test]
fn seeded_runtime_samples_match_the_burn_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = package(&tmp.path().join("pkg"));
    let labels = vec![1i64, 7, 3];
    let g = Guidance { scale: 1.5, ..Guidance::default() };
    // Phase 1 in batches of 2 (two runs) gives the same images as one batch.
    let s = Sampler::builder(rt.clone())
        .cfg(1.5)
        .t_max(0.3)
        .t_min(0.01)
        .denoise_steps(10)
        .seed(42)
        .classes(labels.clone())
        .batch(2)
        .build()
        .unwrap();
    let ours = s.sample(&mut |_| {}).unwrap();
    assert_eq!(ours.labels, labels);
    let burn_model = tiny(false);
    let opts = itarflow::sample::SampleOptions {
        guidance: itarflow::sample::Guidance { scale: g.scale, ..Default::default() },
        t_max: 0.3,
        t_min: 0.01,
        denoise_steps: 10,
        clip: false,
        denoise_batch: 3,
    };
    let zt = itarflow::sample::seeded_noise(&burn_model, 3, 42);
    let burn = itarflow::sample::sample(&burn_model, zt, &itarflow::Labels::Classes(labels), &opts, &mut |_| {});
    let e = rel_err(ours.images.as_slice().unwrap(), &values::<4>(burn));
    println!("runtime vs Burn sampler, seeded, cfg 1.5: {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
}

#[test]
fn non_finite_samples_fail_or_are_sampled_again_from_new_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let labels = vec![2i64, 5, 8];
    let per = model.noise_len();
    let mut z = itarflow_base::prior_noise(3, 3 * per);
    // Image 1's noise is NaN: whatever the model, that sample cannot come out finite.
    z[per + 10] = f32::NAN;
    let build = |policy| Sampler::builder(model.clone()).t_max(0.3).denoise_steps(2).on_non_finite(policy).build().unwrap();
    match build(OnNonFinite::Fail).sample_from(&z, &labels, &mut |_| {}) {
        Err(RtError::NonFinite { index, attempts }) => assert_eq!((index, attempts), (1, 1)),
        other => panic!("expected a NonFinite error, got {:?}", other.map(|s| s.retried)),
    }
    let mut retries = Vec::new();
    let got = build(OnNonFinite::Retry(2))
        .sample_from(&z, &labels, &mut |p| {
            if let itarflow_rt::Progress::Retry { images, attempt } = p {
                retries.push((images, attempt));
            }
        })
        .unwrap();
    assert_eq!(got.retried, vec![(1, 1)]);
    assert_eq!(retries, vec![(1, 1)]);
    assert!(got.images.iter().all(|v| v.is_finite()));
    // The other images are those of a run without the bad one (up to the batch size's rounding).
    let clean = build(OnNonFinite::Fail).sample_from(&[&z[..per], &z[2 * per..]].concat(), &[2, 8], &mut |_| {}).unwrap();
    let n = model.image_len();
    let ours = got.images.as_slice().unwrap();
    let theirs = clean.images.as_slice().unwrap();
    assert!(rel_err(&ours[..n], &theirs[..n]) < 1e-5);
    assert!(rel_err(&ours[2 * n..], &theirs[n..]) < 1e-5);
}

/// A run given a [`Cancel`] flag stops at the step after the flag is set, with
/// `RtError::Cancelled`: set during phase 1, no denoising step runs; during phase 2, no step after
/// the current one (on the step graphs and on the loops); set before, nothing runs. A flag never
/// set changes nothing.
#[test]
fn a_cancelled_run_stops_at_its_next_step() {
    use itarflow_rt::{Cancel, Progress};
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let labels = vec![1i64, 4, 7];
    let z = itarflow_base::prior_noise(5, labels.len() * model.noise_len());
    for resident in [false, true] {
        let s = Sampler::builder(model.clone()).cfg(1.5).t_max(0.3).denoise_steps(6).score_batch(1).resident(resident).build().unwrap();
        let settings = *s.settings();
        let run = |cancel_at: &dyn Fn(&Progress) -> bool, cancel: &Cancel| {
            let mut seen = Vec::new();
            let result = s.sample_cancellable(&z, &labels, &settings, cancel, &mut |p| {
                if cancel_at(&p) {
                    cancel.cancel();
                }
                seen.push(p);
            });
            (result, seen)
        };
        let denoised = |seen: &[Progress]| {
            seen.iter().filter_map(|p| if let Progress::Denoise { step, .. } = p { Some(*step) } else { None }).collect::<Vec<_>>()
        };
        let (whole, seen) = run(&|_| false, &Cancel::new());
        let whole = whole.unwrap();
        assert_eq!(whole.images, s.sample_from(&z, &labels, &mut |_| {}).unwrap().images, "an unset flag changes nothing");
        let steps = denoised(&seen);
        // During phase 1: no denoising step.
        let (r, seen) = run(&|p| matches!(p, Progress::Invert { layer: 1, .. }), &Cancel::new());
        assert!(matches!(r, Err(RtError::Cancelled)), "resident {resident}: {:?}", r.map(|_| ()));
        assert!(denoised(&seen).is_empty(), "resident {resident}: {seen:?}");
        // During phase 2, after its first report: nothing after it.
        let (r, seen) = run(&|p| matches!(p, Progress::Denoise { .. }), &Cancel::new());
        assert!(matches!(r, Err(RtError::Cancelled)), "resident {resident}");
        assert_eq!(denoised(&seen), steps[..1], "resident {resident}: {seen:?}");
        // Set before: nothing runs.
        let gone = Cancel::new();
        gone.cancel();
        let (r, seen) = run(&|_| false, &gone);
        assert!(matches!(r, Err(RtError::Cancelled)) && seen.is_empty(), "resident {resident}: {seen:?}");
        // Phase 2 alone.
        let mut seen = Vec::new();
        let cancel = Cancel::new();
        let r = s.denoise_cancellable(whole.images.view(), &labels, &settings, &cancel, &mut |p| {
            if matches!(p, Progress::Denoise { step: 2, .. }) || resident {
                cancel.cancel();
            }
            seen.push(p);
        });
        assert!(matches!(r, Err(RtError::Cancelled)), "resident {resident}");
        assert_eq!(denoised(&seen), steps[..if resident { 1 } else { 2 }], "resident {resident}: {seen:?}");
    }
}

/// The `itarflow-rt` binary beside this test's (built by `cargo test --workspace`).
fn rt_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("itarflow-rt");
    assert!(bin.exists(), "{} is not built: run the tests with `cargo test --release --workspace`", bin.display());
    bin
}

#[test]
fn a_requested_provider_that_cannot_run_fails_naming_it_and_auto_says_what_it_chose() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    let sample = |provider: &str, extra: &[&str], png: &str| {
        std::process::Command::new(rt_binary())
            .args(["sample", "--model", dir.to_str().unwrap(), "--provider", provider, "--num", "1"])
            .args(extra)
            .arg("--out")
            .arg(tmp.path().join(png))
            .output()
            .unwrap()
    };
    // A provider that cannot run on any host: ONNX Runtime from a library that does not exist.
    let out = sample("cpu", &["--ort-lib", "/nonexistent/libonnxruntime.so"], "never.png");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without its library");
    assert!(err.contains("provider cpu") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    assert!(!tmp.path().join("never.png").exists());
    // The GPU providers run where the host has them, and otherwise fail naming themselves with
    // ONNX Runtime's reason: never a silent fallback to another provider.
    for provider in ["cuda", "tensorrt", "tract-cuda"] {
        let png = format!("{provider}.png");
        let out = sample(provider, &[], &png);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            assert!(tmp.path().join(&png).exists(), "{provider} succeeded without writing its grid");
        } else {
            assert!(err.contains(&format!("provider {provider}:")), "{err}");
            assert!(!tmp.path().join(&png).exists());
        }
    }
    // auto takes the first provider of its preference that runs and says why it skipped each
    // one before it.
    let out = sample("auto", &[], "auto.png");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let chosen = Provider::PREFERENCE
        .iter()
        .position(|p| err.contains(&format!("auto: using {p}\n")))
        .unwrap_or_else(|| panic!("auto named no provider: {err}"));
    for p in &Provider::PREFERENCE[..chosen] {
        assert!(err.contains(&format!("auto: skipped {p}: ")), "{err}");
    }
    assert!(tmp.path().join("auto.png").exists());
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

#[test]
fn check_subcommand_passes_and_fails_past_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    let out = std::process::Command::new(rt_binary()).args(["check", "--model", dir.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for engine in ["tract", "cpu"] {
        assert!(rows.iter().any(|r| r["engine"] == engine && r["graph"] == "layer0_step_fixed"), "{engine}");
        assert!(rows.iter().any(|r| r["engine"] == engine && r["graph"] == "layerwise_score"), "{engine}");
    }
    // The second provider is compared with the first as well as with the reference.
    assert!(rows.iter().any(|r| r["engine"] == "cpu" && r["rel_vs_first"].as_f64().is_some_and(|e| e < 1e-4)));
    // Every provider either ran or is listed as skipped with its reason, whatever the host has.
    let skipped = report["skipped"].as_array().unwrap();
    for p in Provider::ALL {
        let ran = rows.iter().any(|r| r["engine"] == p.name());
        let why = skipped.iter().find(|s| s[0] == p.name()).and_then(|s| s[1].as_str());
        assert!(ran != why.is_some(), "{p}: ran {ran}, skipped {why:?}");
        assert!(why.is_none_or(|w| !w.is_empty()), "{p} skipped without a reason");
    }
    // A reference whose log p is off by 1% fails the check.
    let mut npz = itarflow_base::Npz::read(dir.join("reference.npz")).unwrap();
    let (shape, lp) = npz.f32("score.logp", 1, "", "").unwrap();
    npz.insert("score.logp", itarflow_base::Array::f32(&shape, lp.iter().map(|v| v * 1.01).collect()));
    let bad = tmp.path().join("bad.npz");
    let mut copy = itarflow_base::Npz::new(&bad);
    for name in npz.names() {
        copy.insert(name, npz.get(name).unwrap().clone());
    }
    copy.write().unwrap();
    let out = std::process::Command::new(rt_binary())
        .args(["check", "--model", dir.to_str().unwrap(), "--providers", "tract", "--reference"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.lines().any(|l| l.starts_with("score ") && l.contains("logp") && l.ends_with("FAIL")), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("past tolerance"));
}

/// tract on CPUs less capable than this one, as `TRACT_CPU_ISA` makes tract (and the runtime's
/// own kernels) see it: without AVX-512 (AVX2 and FMA: the smaller matrix tile), and with none
/// of AVX, AVX2 or FMA (tract's baseline kernels, no tile). Every graph of the package within
/// tolerance of Burn's reference outputs, the kernels the report names, and seeded samples
/// within float rounding of this CPU's; a setting this CPU cannot be is refused, naming it.
#[test]
fn tract_on_cpus_without_avx512_or_avx2_reproduces_the_reference() {
    #[cfg(target_arch = "x86_64")]
    {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pkg");
        package(&dir);
        let sample = |isa: &str, out: &std::path::Path| {
            let run = std::process::Command::new(rt_binary())
                .args(["sample", "--model", dir.to_str().unwrap(), "--provider", "tract", "--seed", "3", "--num", "4", "--cfg", "2"])
                .arg("--output")
                .arg(out)
                .env("TRACT_CPU_ISA", isa)
                .output()
                .unwrap();
            assert!(run.status.success(), "{isa}: {}", String::from_utf8_lossy(&run.stderr));
            images(&itarflow_base::Npz::read(out).unwrap(), "x")
        };
        let here = sample("", &tmp.path().join("here.npz"));
        let has = |f: &str| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") || f == "portable";
        // An AVX2 CPU has none of the AVX-512 family (nor AMX); a baseline one none of AVX's.
        let avx2 = "-avx512f,-avx512vnni,-avx512fp16,-amx-int8,-amx-bf16";
        let baseline = format!("{avx2},-avx,-avx2,-fma,-f16c,-avxvnni");
        for (isa, tile) in [(avx2, "avx2-fma"), (baseline.as_str(), "portable")] {
            if !has(tile) {
                continue;
            }
            let out = std::process::Command::new(rt_binary())
                .args(["check", "--model", dir.to_str().unwrap(), "--providers", "tract", "--json"])
                .env("TRACT_CPU_ISA", isa)
                .output()
                .unwrap();
            assert!(out.status.success(), "{isa}: {}", String::from_utf8_lossy(&out.stderr));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let kernels = report["cpu_kernels"].as_str().unwrap_or("");
            assert!(kernels.starts_with(&format!("matrix tile {tile};")), "{isa}: {kernels}");
            assert!(!kernels.contains("avx512") && (tile != "portable" || !kernels.contains("avx")), "{isa}: {kernels}");
            assert!(report["rows"].as_array().unwrap().iter().all(|r| r["pass"] == true), "{isa}");
            let there = sample(isa, &tmp.path().join("there.npz"));
            let diff = here.iter().zip(there.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{isa}: samples {diff:.2e} from this CPU's");
        }
        // A setting that names another architecture's feature, or none tract knows, is refused
        // naming it (tract alone would stop the process at its first kernel, or ignore it).
        for (isa, says) in [("-avx512f,+neon", "neon is a feature of arm"), ("-avx9000", "\"avx9000\" is no instruction set")] {
            let run = std::process::Command::new(rt_binary())
                .args(["sample", "--model", dir.to_str().unwrap(), "--provider", "tract", "--num", "1", "--out"])
                .arg(tmp.path().join("refused.png"))
                .env("TRACT_CPU_ISA", isa)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&run.stderr);
            assert_eq!(run.status.code(), Some(1), "{isa}: {err}");
            assert!(err.contains(&format!("TRACT_CPU_ISA={isa}: {says}")) && err.contains("or unset it"), "{isa}: {err}");
            assert!(!tmp.path().join("refused.png").exists());
        }
    }
}

/// tract's plans without the runtime's load-time rewrites (`ITARFLOW_TRACT_REWRITES=none`):
/// every graph within tolerance of Burn's reference too, the report saying so, and seeded
/// samples within float rounding of the rewritten plans' (two computations of the same images:
/// tract's own ops against the fused ones); a setting naming no rewrite is refused, naming it.
#[test]
fn tract_without_its_rewrites_reproduces_the_reference_and_the_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    let run = |setting: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(rt_binary());
        cmd.args(args).arg("--model").arg(&dir);
        if !setting.is_empty() {
            cmd.env("ITARFLOW_TRACT_REWRITES", setting);
        }
        cmd.output().unwrap()
    };
    let out = run("none", &["check", "--providers", "tract", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["cpu_kernels"].as_str().unwrap_or("").ends_with("; rewrites none"), "{report}");
    assert!(report["rows"].as_array().unwrap().iter().all(|r| r["pass"] == true));
    let sample = |setting: &str, name: &str| {
        let path = tmp.path().join(name);
        let out =
            run(setting, &["sample", "--provider", "tract", "--seed", "5", "--num", "4", "--cfg", "2", "--output", path.to_str().unwrap()]);
        assert!(out.status.success(), "{setting}: {}", String::from_utf8_lossy(&out.stderr));
        images(&itarflow_base::Npz::read(&path).unwrap(), "x")
    };
    let (fused, plain) = (sample("", "fused.npz"), sample("none", "plain.npz"));
    let diff = fused.iter().zip(plain.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "samples {diff:.2e} apart with and without the rewrites");
    let out = run("-nope", &["sample", "--provider", "tract", "--num", "1", "--out", tmp.path().join("refused.png").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ITARFLOW_TRACT_REWRITES=-nope: no rewrite is called nope"), "{err}");
    assert!(!tmp.path().join("refused.png").exists());
}

#[test]
fn bench_subcommand_reports_every_figure_per_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    package(&dir);
    let out = std::process::Command::new(rt_binary())
        .args(["bench", "--model", dir.to_str().unwrap(), "--providers", "tract,cpu", "--batch", "2", "--repeats", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|r| r["provider"].as_str().unwrap()).collect::<Vec<_>>(), ["tract", "cpu"]);
    for r in &lines {
        for field in ["step_ms", "score_ms", "sample_seconds", "images_per_second", "peak_rss_mib"] {
            assert!(r[field].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{field} in {r}");
        }
    }
    // An explicitly requested provider that cannot run (here: ONNX Runtime from a library that
    // does not exist) fails the command, naming the provider and the reason.
    let out = std::process::Command::new(rt_binary())
        .args(["bench", "--model", dir.to_str().unwrap(), "--providers", "cpu", "--batch", "1"])
        .args(["--ort-lib", "/nonexistent/libonnxruntime.so"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bench on cpu failed") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

/// Phase 2's batch from a memory budget per kind of provider: the CPU's on tract (host memory),
/// never the GPU's (the default GPU budget is 8x the CPU's).
#[test]
fn the_score_batch_follows_the_budget_of_the_provider_it_runs_on() {
    let tmp = tempfile::tempdir().unwrap();
    let model = package(&tmp.path().join("pkg"));
    let per_image = itarflow_rt::memory::score_bytes_per_image(&model.manifest, ScoreForm::Whole);
    let s = Sampler::builder(model.clone()).provider(Provider::Tract).memory_budgets(3 * per_image, 300 * per_image).build().unwrap();
    assert_eq!(s.settings().denoise_batch, 3);
    let s = Sampler::builder(model).provider(Provider::Tract).memory_budget(5 * per_image).build().unwrap();
    assert_eq!(s.settings().denoise_batch, 5);
}

/// The reference vectors, and the tiny model exported with fp32 and fp16 graphs to `pkg` in a
/// temporary folder.
fn package_of_both_precisions() -> (itarflow_base::Npz, tempfile::TempDir, Arc<Model>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let m = tiny(false);
    let mut opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    opts.precisions = itarflow_export::package::Precisions::Both;
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), &dir, &opts, &mut |_| {}).unwrap();
    (vectors(), tmp, Arc::new(Model::load(&dir).unwrap()))
}

/// tract's fp16 graphs computed in fp32 (`F16Compute::Fp32`, the default on CPUs without fp16
/// arithmetic) against the same graphs computed in fp16 (`Native`) and the fp32 graphs: sampling
/// and the score agree with fp16 arithmetic within fp16's rounding, and are not the fp32 graphs'
/// results (the weights and the graphs' inputs and outputs stay fp16), nor fp16 arithmetic's to
/// the bit (so the test can tell that the translation happened).
#[test]
fn tract_computes_fp16_graphs_in_fp32_keeping_their_fp16_weights_and_values() {
    use itarflow_rt::Precision::{Fp16, Fp32};
    use itarflow_rt::provider::tract::F16Compute;
    let (v, _tmp, model) = package_of_both_precisions();
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let (x, t) = (images(&v, "x"), array(&v, "t").1);
    let with = |precision: itarflow_rt::Precision, f16: F16Compute| {
        let o = itarflow_rt::ProviderOptions { tract_f16: f16, ..Default::default() };
        let s = Sampler::builder(model.clone()).provider(Provider::Tract).provider_options(o).precision(precision);
        s.cfg(2.0).t_max(0.3).t_min(0.01).denoise_steps(3).build().unwrap()
    };
    let run = |s: &Sampler| {
        let images = s.sample_from(&z, &y, &mut |_| {}).unwrap().images;
        let (score, _) = s.score(x.view(), &t, &y).unwrap();
        (images, score)
    };
    let (images32, score32) = run(&with(Fp32, F16Compute::Fp32));
    let (images_native, score_native) = run(&with(Fp16, F16Compute::Native));
    let (images_up, score_up) = run(&with(Fp16, F16Compute::Fp32));
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    let (images_up, images_native, images32) =
        (images_up.as_slice().unwrap(), images_native.as_slice().unwrap(), images32.as_slice().unwrap());
    let (score_up, score_native, score32) = (score_up.as_slice().unwrap(), score_native.as_slice().unwrap(), score32.as_slice().unwrap());
    let samples = (max_diff(images_up, images_native), max_diff(images_up, images32));
    let scores = (rel_err(score_up, score_native) as f32, rel_err(score_up, score32) as f32);
    println!(
        "fp16 graphs in fp32 against fp16 arithmetic / the fp32 graphs: samples {:.2e} / {:.2e}, score {:.2e} / {:.2e}",
        samples.0, samples.1, scores.0, scores.1
    );
    // fp16 arithmetic's rounding: the tolerance of `check` for the score, 5e-2 on samples in [-1, 1].
    assert!(samples.0 <= 5e-2 && scores.0 <= 5e-2, "{samples:?} {scores:?}");
    assert!(samples.0 > 0.0 && scores.0 > 0.0, "the fp16 graphs computed the same in fp16 and in fp32: {samples:?} {scores:?}");
    assert!(samples.1 > 1e-5 && scores.1 > 1e-5, "the fp16 graphs gave the fp32 graphs' results: {samples:?} {scores:?}");
}

#[test]
fn mixed_precision_inverts_with_the_fp32_graphs_and_denoises_with_the_fp16_ones() {
    let (v, tmp, model) = package_of_both_precisions();
    let dir = tmp.path().join("pkg");
    let (_, z) = array(&v, "rev_z");
    let y = v.i64("y", 1, "", "").unwrap().1;
    let with = |precision: itarflow_rt::Precision, steps: usize| {
        let s = Sampler::builder(model.clone()).provider(Provider::Tract).precision(precision).cfg(2.0).t_max(0.3).t_min(0.01);
        s.denoise_steps(steps).score_batch(3).build().unwrap()
    };
    use itarflow_rt::Precision::{Fp16, Fp32, Mixed};
    // What mixed should be: phase 1 of the fp32 sampler, then phase 2 of the fp16 one.
    let phase1 = with(Fp32, 0).sample_from(&z, &y, &mut |_| {}).unwrap().images;
    let want = with(Fp16, 10).denoise(phase1.view(), &y, &mut |_| {}).unwrap();
    let mixed = with(Mixed, 10).sample_from(&z, &y, &mut |_| {}).unwrap().images;
    let max_diff = |a: &ndarray::Array4<f32>, b: &ndarray::Array4<f32>| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    let d = max_diff(&mixed, &want);
    println!("mixed against fp32 phase 1 + fp16 phase 2: max |diff| {d:.2e}");
    assert!(d <= 1e-6, "mixed precision is not fp32 phase 1 then fp16 phase 2: {d:.2e}");
    // Both precisions' samples differ from it, so the comparison above can tell them apart.
    for p in [Fp32, Fp16] {
        let other = with(p, 10).sample_from(&z, &y, &mut |_| {}).unwrap().images;
        let d = max_diff(&mixed, &other);
        println!("mixed against {}: max |diff| {d:.2e}", p.name());
        assert!(d > 1e-5, "{} sampling gives the mixed samples ({d:.2e})", p.name());
    }
    // The command line says when tract would emulate fp16 (about 100x slower than fp32: asked
    // for with --tract-f16 native on a CPU without fp16 arithmetic), and only then.
    let note = "note: tract computes fp16 graphs in software";
    for (provider, precision, f16) in
        [("tract", "mixed", "native"), ("tract", "mixed", "auto"), ("tract", "fp32", "native"), ("cpu", "fp16", "native")]
    {
        let out = std::process::Command::new(rt_binary())
            .args(["sample", "--model", dir.to_str().unwrap(), "--provider", provider, "--precision", precision, "--num", "1"])
            .args(["--tract-f16", f16, "--out"])
            .arg(tmp.path().join(format!("{provider}_{precision}_{f16}.png")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{provider} {precision} {f16}: {err}");
        let want = provider == "tract" && precision != "fp32" && f16 == "native" && !itarflow_rt::provider::tract::native_f16();
        assert_eq!(err.contains(note), want, "{provider} {precision} {f16}: {err}");
    }
    // A package without fp16 graphs cannot run mixed: the error names the missing graphs.
    let fp32_only = package(&tmp.path().join("fp32"));
    let e = Sampler::builder(fp32_only)
        .provider(Provider::Tract)
        .precision(Mixed)
        .build()
        .and_then(|s| s.sample_from(&z, &y, &mut |_| {}).map(|_| ()));
    let msg = e.unwrap_err().to_string();
    assert!(msg.contains("fp16") && msg.contains("--precision"), "{msg}");
}

/// `itarflow-rt info --json` against what the package folder and its manifest hold, counted here
/// independently, and its refusal of a package with an altered file.
#[test]
fn info_describes_a_package_and_refuses_an_altered_one() {
    let (_v, tmp, _model) = package_of_both_precisions();
    let dir = tmp.path().join("pkg");
    let info =
        |dir: &std::path::Path| std::process::Command::new(rt_binary()).args(["info", "--json", "--model"]).arg(dir).output().unwrap();
    let out = info(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn walk(d: &std::path::Path, files: &mut Vec<u64>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { walk(&p, files) } else { files.push(p.metadata().unwrap().len()) }
        }
    }
    let mut sizes = Vec::new();
    walk(&dir, &mut sizes);
    assert_eq!(got["files"].as_u64(), Some(sizes.len() as u64), "{got}");
    assert_eq!(got["bytes"].as_u64(), Some(sizes.iter().sum::<u64>()), "{got}");
    assert_eq!(got["parameters"].as_u64(), Some(tiny(false).config.num_params() as u64));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for precision in ["fp32", "fp16"] {
        let n = manifest["graphs"].as_array().unwrap().iter().filter(|g| g["precision"] == precision).count();
        assert_eq!(got["graphs"][precision]["graphs"].as_u64(), Some(n as u64), "{precision}: {got}");
        assert!(got["graphs"][precision]["bytes"].as_u64().unwrap() > 0);
    }
    assert!(got["graphs"]["fp16"]["bytes"].as_u64() < got["graphs"]["fp32"]["bytes"].as_u64(), "fp16 weights take half the bytes");
    assert_eq!(got["precisions"], serde_json::json!(["fp16", "fp32", "mixed"]));
    assert_eq!(got["served_as"], serde_json::json!(["pkg", "pkg-score", "pkg-denoise"]));
    assert_eq!(got["sampler"], manifest["sampler"]);
    // One byte of a weight file changed: refused, naming the file.
    let weights = std::fs::read_dir(dir.join("fp32"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "weights"))
        .unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let out = info(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(weights.file_name().unwrap().to_str().unwrap()), "{err}");
}

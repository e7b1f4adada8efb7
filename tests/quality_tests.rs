//! The quality evaluator: the classifier's exported graph against Burn, reproducible training,
//! its directory read back, evaluation figures checked against values computed another way
//! (the test set against its own statistics, Burn's predictions, the library's sampler, Burn's
//! sampler), the eval-quality and ablate commands, and damaged directories.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use common::*;
use itarflow::classifier::{self, ClassifierTraining, LeNet, weights};
use itarflow::data::ImageSet;
use itarflow_base::{ClassifierConfig, GaussianNoise};
use itarflow_rt::quality::{self, Classifier, ClassifierGraph};
use itarflow_rt::sampler::SampleSettings;
use itarflow_rt::{Model, Provider, Sampler};
use ndarray::ArrayView4;
use serde_json::Value;

/// 16x16 images of 10 classes told apart by where a bright bar lies (rows for classes 0-4,
/// columns for 5-9), on a noisy background: learnable in a few epochs.
fn bars(n: usize, seed: u64) -> ImageSet {
    let s = 16;
    let mut rng = GaussianNoise::new(seed);
    let mut pixels = Vec::with_capacity(n * s * s);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % 10;
        let at = 1 + 3 * (k % 5);
        for y in 0..s {
            for x in 0..s {
                let on = if k < 5 { (at..at + 2).contains(&y) } else { (at..at + 2).contains(&x) };
                let v = if on { 200.0 } else { 50.0 } + 25.0 * rng.sample_f32(1)[0];
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(k as i64);
    }
    ImageSet { channels: 1, size: s, pixels, labels, num_classes: 10, class_names: vec![] }
}

fn config() -> ClassifierConfig {
    ClassifierConfig::lenet(1, 16, 10)
}

fn quick() -> ClassifierTraining {
    // No flips: mirrored columns would make the vertical bars of classes 5 and 9 one class.
    ClassifierTraining { epochs: 8, batch_size: 20, warmup: 10, seed: 3, hflip: false, ..ClassifierTraining::default() }
}

fn scaled(set: &ImageSet) -> Vec<f32> {
    classifier::train::scaled(set, 0, set.len())
}

/// A trained classifier's directory (train 300 bar images, test 100).
fn directory(dir: &Path) -> LeNet {
    let (train, test) = (bars(300, 1), bars(100, 2));
    let model = classifier::train(&config(), &train, &test, &quick(), &mut |_| {}).unwrap();
    let names = (0..10).map(|k| format!("bar {k}")).collect();
    classifier::write_directory(dir, &config(), &model, &train, &test, "bars", names, serde_json::json!({})).unwrap();
    model
}

#[test]
fn the_exported_graph_computes_what_burn_computes() {
    let c = config();
    let device = device();
    device.seed(11);
    let model = LeNet::new(&c, &device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("classifier.onnx");
    itarflow_export::classifier::write_classifier(&c, &model.to_named(), &path).unwrap();
    let x = bars(7, 5);
    let data = scaled(&x);
    let (f, l) = model.forward(Tensor::<4>::from_data(TensorData::new(data.clone(), [7, 1, 16, 16]), &device));
    let graph = ClassifierGraph::load(&path, c).unwrap();
    let out = graph.run(ArrayView4::from_shape((7, 1, 16, 16), &data).unwrap()).unwrap();
    let (ef, el) = (rel_err(out.features.as_slice().unwrap(), &values(f)), rel_err(out.logits.as_slice().unwrap(), &values(l)));
    println!("exported classifier vs Burn: features {ef:.2e}, logits {el:.2e}");
    assert!(ef < 1e-5 && el < 1e-5, "features {ef}, logits {el}");
}

#[test]
fn training_is_reproducible_and_learns() {
    let (train, test) = (bars(200, 1), bars(100, 2));
    let mut epochs = Vec::new();
    let a = classifier::train(&config(), &train, &test, &quick(), &mut |e| {
        if let classifier::Event::Epoch { test_accuracy, .. } = e {
            epochs.push(test_accuracy);
        }
    })
    .unwrap();
    let b = classifier::train(&config(), &train, &test, &quick(), &mut |_| {}).unwrap();
    assert!(a.to_named() == b.to_named(), "two runs of one seed differ");
    let other = classifier::train(&config(), &train, &test, &ClassifierTraining { seed: 4, ..quick() }, &mut |_| {}).unwrap();
    assert!(a.to_named() != other.to_named(), "another seed trains the same weights");
    let (acc, per_class) = classifier::accuracy(&a, &test);
    println!("bars: test accuracy per epoch {epochs:?}, per class {per_class:?}");
    assert_eq!(epochs.len(), 8);
    assert_eq!(*epochs.last().unwrap(), acc);
    assert!(acc >= 0.9, "a classifier of bars should separate them, got {acc}");
}

#[test]
fn a_directory_reads_back_and_judges_the_test_set_as_the_test_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clf");
    let model = directory(&dir);
    let (loaded_config, loaded) = weights::load(&dir.join("classifier.safetensors"), &device()).unwrap();
    assert_eq!(loaded_config, config());
    assert!(loaded.to_named() == model.to_named(), "the weights file holds the trained weights");
    let clf = Classifier::load(&dir).unwrap();
    let test = bars(100, 2);
    // The card's accuracy (through the graph) against Burn's predictions of the same images.
    let burn = classifier::train::predict(&model, &test);
    let burn_acc = burn.iter().zip(&test.labels).filter(|(p, y)| **p as i64 == **y).count() as f64 / 100.0;
    assert!((clf.card.test_accuracy - burn_acc).abs() <= 0.01, "card {} vs Burn {burn_acc}", clf.card.test_accuracy);
    assert!(clf.card.floors.is_empty(), "300 training images are fewer than any floor's");
    // The test set against its own statistics: FLD 0, overall and per class; the accuracy the card's.
    let x = scaled(&test);
    let r = quality::evaluate(&clf, ArrayView4::from_shape((100, 1, 16, 16), &x).unwrap(), &test.labels).unwrap();
    // Not exactly 0: the features are computed again (other batches; tract's kernels split and
    // sum differently with batch size and load), and the square root of a product of
    // near-singular covariances (10 images per class in 84 dimensions) turns float rounding into
    // FLD of order 1e-6 (seen: 4e-9 run alone, 2.2e-6 beside the other tests). 1e-4 is still
    // 1,800x below the smallest FLD between real image sets (the classifier's floor, 0.18).
    println!("test set against itself: FLD {:.3e}, per class {:?}", r.fld, r.per_class.iter().map(|c| c.fld).collect::<Vec<_>>());
    assert!(r.fld < 1e-4, "{}", r.fld);
    assert!(r.per_class.iter().all(|c| c.count == 10 && c.fld.unwrap() < 1e-4), "{:?}", r.per_class);
    assert_eq!(r.class_accuracy, Some(clf.card.test_accuracy));
    assert!((r.predicted_share.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // Other images are farther: the training set is near, noise far.
    let train = bars(300, 1);
    let xt = scaled(&train);
    let near = quality::evaluate(&clf, ArrayView4::from_shape((300, 1, 16, 16), &xt).unwrap(), &train.labels).unwrap();
    let noise: Vec<f32> = itarflow_base::prior_noise(9, 300 * 256).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let far = quality::evaluate(&clf, ArrayView4::from_shape((300, 1, 16, 16), &noise).unwrap(), &train.labels).unwrap();
    println!("FLD: training images {:.4}, noise {:.4}", near.fld, far.fld);
    assert!(near.fld > 0.0 && near.fld < far.fld);
    // Labels the classifier does not know are refused.
    assert!(quality::evaluate(&clf, ArrayView4::from_shape((100, 1, 16, 16), &x).unwrap(), &vec![10; 100]).is_err());
}

#[test]
fn damaged_classifier_directories_say_which_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clf");
    directory(&dir);
    let err = |d: &Path| Classifier::load(d).err().map(|e| e.to_string()).expect("a damaged directory is refused");
    let broken = tmp.path().join("broken");
    let copy = || {
        let _ = std::fs::remove_dir_all(&broken);
        std::fs::create_dir_all(&broken).unwrap();
        for f in ["classifier.onnx", "card.json", "reference.npz"] {
            std::fs::copy(dir.join(f), broken.join(f)).unwrap();
        }
    };
    copy();
    std::fs::remove_file(broken.join("card.json")).unwrap();
    assert!(err(&broken).contains("card.json"), "{}", err(&broken));
    copy();
    let npz = broken.join("reference.npz");
    let mut stats = itarflow_base::Npz::read(&npz).unwrap();
    stats.insert("test_mean", itarflow_base::Array { shape: vec![3], data: itarflow_base::ArrayData::F64(vec![0.0; 3]) });
    stats.write().unwrap();
    assert!(err(&broken).contains("test_mean"), "{}", err(&broken));
    copy();
    let bytes = std::fs::read(broken.join("classifier.onnx")).unwrap();
    std::fs::write(broken.join("classifier.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(err(&broken).contains("classifier.onnx"), "{}", err(&broken));
    copy();
    std::fs::write(broken.join("card.json"), "{\"config\": 1}").unwrap();
    assert!(err(&broken).contains("card.json"), "{}", err(&broken));
}

fn rt() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("itarflow-rt")
}

fn package(dir: &Path) {
    let m = tiny(false);
    let opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), dir, &opts, &mut |_| {}).unwrap();
}

fn json_of(out: std::process::Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn eval_quality_gives_the_figures_of_the_same_images_sampled_by_the_library_and_by_burn() {
    let tmp = tempfile::tempdir().unwrap();
    let (clf_dir, pkg) = (tmp.path().join("clf"), tmp.path().join("pkg"));
    directory(&clf_dir);
    package(&pkg);
    let args = ["--num", "30", "--seed", "4", "--cfg", "1.5", "--denoise-steps", "2", "--json"];
    let run = |extra: &[&str]| {
        json_of(
            Command::new(rt())
                .arg("eval-quality")
                .arg("--model")
                .arg(&pkg)
                .arg("--classifier")
                .arg(&clf_dir)
                .args(args)
                .args(extra)
                .output()
                .unwrap(),
        )
    };
    let cli = run(&["--chunk", "7"]);
    // The images do not depend on how many the sampler runs at once (to float rounding).
    let whole = run(&["--chunk", "30"]);
    let (f7, f30) = (cli["report"]["fld"].as_f64().unwrap(), whole["report"]["fld"].as_f64().unwrap());
    assert!((f7 - f30).abs() <= 1e-4 * f30, "chunks of 7: {f7}, one chunk: {f30}");
    // The library: one sampler run over all 30 images from the seed's noise, then evaluate.
    let model = std::sync::Arc::new(Model::load(&pkg).unwrap());
    let mut settings = itarflow_rt::sampler::defaults(&model);
    settings.guidance.scale = 1.5;
    settings.denoise_steps = 2;
    let sampler = Sampler::builder(model.clone()).provider(Provider::Tract).settings(settings).build().unwrap();
    let labels = quality::balanced_labels(30, 10);
    let z = itarflow_base::prior_noise(4, 30 * model.noise_len());
    let images = sampler.sample_from(&z, &labels, &mut |_| {}).unwrap().images;
    let clf = Classifier::load(&clf_dir).unwrap();
    let lib = quality::evaluate(&clf, images.view(), &labels).unwrap();
    let fld = cli["report"]["fld"].as_f64().unwrap();
    println!("eval-quality FLD {fld}, library {}", lib.fld);
    assert!((fld - lib.fld).abs() <= 1e-4 * lib.fld, "{fld} vs {}", lib.fld);
    assert_eq!(cli["report"]["class_accuracy"].as_f64(), lib.class_accuracy);
    let per_class = cli["report"]["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 10);
    assert!(per_class.iter().all(|c| c["count"] == 3));
    assert_eq!(cli["redrawn"], serde_json::json!([]));
    // Burn's reference sampler from the checkpoint the package was exported from: same noise,
    // same images to float precision, so the same figures (with --retries, nothing to redraw).
    let burn = json_of(
        Command::new(env!("CARGO_BIN_EXE_itarflow"))
            .args(["eval-quality", "--ckpt"])
            .arg(fixture("tiny16_c1.safetensors"))
            .arg("--classifier")
            .arg(&clf_dir)
            .args(args)
            .args(["--retries", "1"])
            .output()
            .unwrap(),
    );
    let burn_fld = burn["report"]["fld"].as_f64().unwrap();
    println!("Burn's sampler: FLD {burn_fld}");
    assert!((burn_fld - fld).abs() <= 1e-3 * fld, "{burn_fld} vs {fld}");
    assert_eq!(burn["redrawn"], serde_json::json!([]));
}

/// The tiny model's package (kept alive by the returned directory), loaded, with 2 denoising steps.
fn tiny_package_two_steps() -> (tempfile::TempDir, std::sync::Arc<Model>, SampleSettings) {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg);
    let model = std::sync::Arc::new(Model::load(&pkg).unwrap());
    let mut settings = itarflow_rt::sampler::defaults(&model);
    settings.denoise_steps = 2;
    (tmp, model, settings)
}

/// Every image of `n` values in `ours` equals `theirs`' (1e-5) but image `k`, which differs.
fn only_image_differs(ours: &[f32], theirs: &[f32], n: usize, k: usize) {
    for i in (0..ours.len() / n).filter(|&i| i != k) {
        let e = rel_err(&ours[i * n..(i + 1) * n], &theirs[i * n..(i + 1) * n]);
        assert!(e < 1e-5, "image {i}: {e:.2e}");
    }
    assert!(rel_err(&ours[k * n..(k + 1) * n], &theirs[k * n..(k + 1) * n]) > 1e-2, "image {k} was not drawn again");
}

#[test]
fn an_evaluation_redraws_non_finite_images_and_names_them_by_their_place_in_the_whole_set() {
    let (_tmp, model, settings) = tiny_package_two_steps();
    let per = model.noise_len();
    let labels = quality::balanced_labels(9, 10);
    let clean = itarflow_base::prior_noise(5, 9 * per);
    let mut z = clean.clone();
    // Image 6 (the third of the second chunk of 4) cannot come out finite from NaN noise.
    z[6 * per + 2] = f32::NAN;
    let sampler =
        |policy| Sampler::builder(model.clone()).provider(Provider::Tract).settings(settings).on_non_finite(policy).build().unwrap();
    match quality::generate_from(&sampler(itarflow_rt::OnNonFinite::Fail), &z, &labels, &settings, 4, &mut |_| {}) {
        Err(itarflow_rt::RtError::NonFinite { index, attempts }) => assert_eq!((index, attempts), (6, 1)),
        other => panic!("expected NonFinite for image 6, got {:?}", other.map(|g| g.redrawn)),
    }
    let got = quality::generate_from(&sampler(itarflow_rt::OnNonFinite::Retry(1)), &z, &labels, &settings, 4, &mut |_| {}).unwrap();
    assert_eq!(got.redrawn, vec![6]);
    assert!(got.images.iter().all(|v| v.is_finite()));
    // Every other image is the one the clean noise gives.
    let reference = quality::generate_from(&sampler(itarflow_rt::OnNonFinite::Fail), &clean, &labels, &settings, 4, &mut |_| {}).unwrap();
    let n = model.image_len();
    let (ours, theirs) = (got.images.as_slice().unwrap(), reference.images.as_slice().unwrap());
    only_image_differs(ours, theirs, n, 6);
    assert!(reference.redrawn.is_empty());
    // An image's new noise is its own: the same images whatever the chunk size.
    let whole = quality::generate_from(&sampler(itarflow_rt::OnNonFinite::Retry(1)), &z, &labels, &settings, 9, &mut |_| {}).unwrap();
    assert_eq!(whole.redrawn, vec![6]);
    let e = rel_err(&ours[6 * n..7 * n], &whole.images.as_slice().unwrap()[6 * n..7 * n]);
    assert!(e < 1e-5, "image 6 redrawn in chunks of 4 and of 9: {e:.2e}");
}

#[test]
fn the_ablations_redraw_images_whose_denoising_diverges() {
    let (_tmp, model, settings) = tiny_package_two_steps();
    let labels = quality::balanced_labels(9, 10);
    let sampler =
        |policy| Sampler::builder(model.clone()).provider(Provider::Tract).settings(settings).on_non_finite(policy).build().unwrap();
    let noisy = quality::generate(
        &sampler(itarflow_rt::OnNonFinite::Fail),
        &labels,
        &SampleSettings { denoise_steps: 0, ..settings },
        2,
        9,
        &mut |_| {},
    )
    .unwrap()
    .images;
    let mut broken = noisy.clone();
    broken[[6, 0, 3, 3]] = f32::NAN;
    let fail = sampler(itarflow_rt::OnNonFinite::Fail);
    let (kept, bad) = fail.denoise_keeping_non_finite(broken.view(), &labels, &settings, &mut |_| {}).unwrap();
    assert_eq!(bad, vec![6]);
    assert!(kept.slice(ndarray::s![6, .., .., ..]).iter().any(|v| !v.is_finite()));
    match quality::ablation::denoise_redrawing(&fail, broken.view(), &labels, &settings, 2, 4) {
        Err(itarflow_rt::RtError::NonFinite { index, .. }) => assert_eq!(index, 6),
        other => panic!("expected NonFinite for image 6, got {:?}", other.map(|(_, n)| n)),
    }
    let (x, redrawn) =
        quality::ablation::denoise_redrawing(&sampler(itarflow_rt::OnNonFinite::Retry(1)), broken.view(), &labels, &settings, 2, 4)
            .unwrap();
    assert_eq!(redrawn, 1);
    assert!(x.iter().all(|v| v.is_finite()));
    // The other images are the clean ones denoised; image 6 is a new sample of its class.
    let clean = fail.denoise_with(noisy.view(), &labels, &settings, &mut |_| {}).unwrap();
    let n = model.image_len();
    let (ours, theirs) = (x.as_slice().unwrap(), clean.as_slice().unwrap());
    only_image_differs(ours, theirs, n, 6);
}

#[test]
fn ablate_measures_every_configuration_and_draws_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (clf_dir, pkg, out) = (tmp.path().join("clf"), tmp.path().join("pkg"), tmp.path().join("abl"));
    directory(&clf_dir);
    package(&pkg);
    let j = json_of(
        Command::new(rt())
            .args(["ablate", "--model"])
            .arg(&pkg)
            .arg("--classifier")
            .arg(&clf_dir)
            .args(["--num", "20", "--steps", "0,1,2", "--scales", "0,2", "--cfg", "2", "--denoise-steps", "2", "--json", "--out"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    let rows = j["rows"].as_array().unwrap();
    let of = |study: &str| rows.iter().filter(|r| r["study"] == study).cloned().collect::<Vec<_>>();
    let (steps, scales, styles) = (of("denoise_steps"), of("cfg_scale"), of("cfg_style"));
    assert_eq!(steps.iter().map(|r| r["denoise_steps"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(scales.len(), 2);
    assert_eq!(styles.len(), 2);
    assert!(rows.iter().all(|r| r["redrawn"] == 0), "no image of the tiny model diverges");
    // The centre (cfg 2, 2 steps, tarflow) is measured once and shared by the studies.
    assert_eq!(scales[1]["fld"], steps[2]["fld"]);
    assert_eq!(styles[0]["fld"], steps[2]["fld"]);
    // Each row is what eval-quality measures for its settings (same seed, same images).
    let one = json_of(
        Command::new(rt())
            .args(["eval-quality", "--model"])
            .arg(&pkg)
            .arg("--classifier")
            .arg(&clf_dir)
            .args(["--num", "20", "--cfg", "2", "--cfg-style", "starflow", "--denoise-steps", "2", "--json"])
            .output()
            .unwrap(),
    );
    let (a, b) = (styles[1]["fld"].as_f64().unwrap(), one["report"]["fld"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-4 * b, "ablate {a} vs eval-quality {b}");
    for f in ["ablation.json", "ablation.md"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let table = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(table.contains("Denoising steps") && table.contains("| 2 | starflow | 2 |"), "{table}");
    let png = image::open(out.join("ablation.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1400, 900));
}

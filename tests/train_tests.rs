//! Training: a resumed run follows the uninterrupted one exactly; the loss goes down; the
//! bits/dim evaluation agrees with the model's log p.

mod common;

use itarflow::train::config::adamw;
use std::sync::Arc;

use burn::prelude::*;
use common::*;
use itarflow::ModelConfig;
use itarflow::checkpoint::names::to_named;
use itarflow::data::{DatasetKind, ImageSet, Loader, LoaderOptions};
use itarflow::train::nll::{NllOptions, bits_per_dim};
use itarflow::train::{TrainConfig, Trainer};

/// 64 synthetic 8x8 grey images of 4 classes: a bright square whose corner depends on the class.
fn synthetic_set() -> ImageSet {
    let mut noise = itarflow_base::GaussianNoise::new(11);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..64 {
        let k = i % 4;
        for y in 0..8 {
            for x in 0..8 {
                let inside = (y / 4 == k / 2) && (x / 4 == k % 2);
                let v = if inside { 220.0 } else { 30.0 } + 10.0 * noise.next_f64();
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(k as i64);
    }
    ImageSet { channels: 1, size: 8, pixels, labels, num_classes: 4, class_names: vec![] }
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        init: None,
        model: ModelConfig {
            img_size: 8,
            in_channels: 1,
            patch_sizes: vec![2],
            num_layers: 2,
            widths: vec![32],
            blocks_per_layer: vec![1],
            head_dim: 16,
            expansion: 4,
            num_classes: 4,
            shared_backbone_blocks: 0,
            affine: true,
            input_scale: 1.0,
            t_min: 0.01,
            t_max: 0.3,
        },
        dataset: DatasetKind::Idx,
        data_dir: "unused".into(),
        pad: 0,
        hflip: true,
        batch_size: 8,
        steps,
        lr: 2e-3,
        min_lr: 1e-4,
        warmup: 3,
        weight_decay: adamw::WEIGHT_DECAY,
        beta1: adamw::BETA1,
        beta2: adamw::BETA2,
        grad_clip: 1.0,
        ema: Some(0.9),
        label_dropout: 0.25,
        seed: 3,
        checkpoint_every: 1,
        sample_every: 0,
        eval_every: 0,
        eval_images: 0,
        log_every: 1,
        sample_cfg: 0.0,
    }
}

/// Burn's random initialisation draws from one process-wide generator that `Trainer::new`
/// seeds: trainers made on concurrent test threads would interleave their draws.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn new_trainer(c: TrainConfig) -> Trainer {
    let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
    Trainer::new(c).unwrap()
}

fn run(trainer: &mut Trainer, set: &Arc<ImageSet>, n: u64) -> Vec<f64> {
    let c = &trainer.config;
    let opts = LoaderOptions { batch_size: c.batch_size, seed: c.seed, pad: c.pad, hflip: c.hflip, prefetch: 2 };
    let mut loader = Loader::new(set.clone(), opts, trainer.step);
    (0..n).map(|_| trainer.train_step(&loader.next_batch()).unwrap().loss).collect()
}

fn weights(model: &itarflow::ITarFlow) -> Vec<(String, Vec<f32>)> {
    to_named(model).into_iter().map(|(k, t)| (k, t.data)).collect()
}

#[test]
fn resume_after_stop_follows_the_uninterrupted_run() {
    let set = Arc::new(synthetic_set());
    let mut straight = new_trainer(config(10));
    let losses = run(&mut straight, &set, 10);

    let dir = tempfile::tempdir().unwrap();
    let mut first = new_trainer(config(10));
    let mut resumed_losses = run(&mut first, &set, 4);
    first.save(dir.path(), 1.0).unwrap();
    drop(first);
    let mut second = Trainer::resume(dir.path()).unwrap();
    assert_eq!(second.step, 4);
    resumed_losses.extend(run(&mut second, &set, 6));
    assert_eq!(losses, resumed_losses);
    assert_eq!(weights(&straight.model.valid()), weights(&second.model.valid()));
    assert_eq!(weights(straight.ema.as_ref().unwrap()), weights(second.ema.as_ref().unwrap()));
}

/// A step's gradients in the model's parameter order (None where the step reaches none).
struct Collect<'a>(&'a burn::optim::GradientsParams, Vec<Option<Vec<f32>>>);

impl burn::module::ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        self.1.push(self.0.get::<D>(param.id).map(|g| g.into_data().try_to_vec::<f32>().unwrap()));
    }
}

fn gradient_list(trainer: &Trainer, grads: &burn::optim::GradientsParams) -> Vec<Option<Vec<f32>>> {
    let mut c = Collect(grads, Vec::new());
    burn::module::Module::visit(&trainer.model, &mut c);
    c.1
}

#[test]
fn a_batch_split_over_workers_has_the_whole_batch_gradient() {
    // The whole batch differentiated in one graph (one worker) against the sum of three parts'
    // gradients (3 + 3 + 2 images on forks of the model, on three threads).
    let set = Arc::new(synthetic_set());
    let mut trainer = new_trainer(config(4));
    let c = &trainer.config;
    let opts = LoaderOptions { batch_size: c.batch_size, seed: c.seed, pad: c.pad, hflip: c.hflip, prefetch: 2 };
    let batch = Loader::new(set.clone(), opts, 0).next_batch();
    trainer.workers = 1;
    let a = trainer.gradients(&batch);
    trainer.workers = 3;
    let b = trainer.gradients(&batch);
    assert!(
        (a.weighted_loss - b.weighted_loss).abs() < 1e-6 * a.weighted_loss.abs().max(1.0),
        "{} vs {}",
        a.weighted_loss,
        b.weighted_loss
    );
    assert!((a.mean_loss - b.mean_loss).abs() < 1e-6 * a.mean_loss.abs().max(1.0), "{} vs {}", a.mean_loss, b.mean_loss);
    let (ga, gb) = (gradient_list(&trainer, &a.grads), gradient_list(&trainer, &b.grads));
    assert_eq!(ga.len(), gb.len());
    let mut compared = 0;
    for (k, (x, y)) in ga.iter().zip(&gb).enumerate() {
        let (x, y) = match (x, y) {
            (Some(x), Some(y)) => (x, y),
            (None, None) => continue,
            _ => panic!("parameter {k} has a gradient in one step only"),
        };
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let gap = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(gap / scale < 1e-5, "parameter {k}: relative gradient difference {:.2e}", gap / scale);
        compared += 1;
    }
    assert!(compared > 10, "compared {compared} parameters");
}

#[test]
fn loss_decreases_on_synthetic_data() {
    let set = Arc::new(synthetic_set());
    let mut trainer = new_trainer(config(60));
    let losses = run(&mut trainer, &set, 60);
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[50..].iter().sum::<f64>() / 10.0;
    assert!(last < first - 0.1, "loss went from {first:.3} to {last:.3}");
}

#[test]
fn bits_per_dim_is_minus_log_p_over_d_ln2() {
    let set = synthetic_set();
    let model = random_model(&config(1).model, 5);
    let t = 0.05;
    let report = bits_per_dim(&model, &set, &NllOptions { pad: 0, t, batch_size: 24, limit: 40, seed: 9 }, &mut |_, _| {});
    assert_eq!(report.images, 40);
    // The same images and noise, through log_prob directly.
    let mut noise = itarflow_base::GaussianNoise::new(9);
    let mut total = 0.0;
    for start in (0..40).step_by(24) {
        let b = 24.min(40 - start);
        let mut xs = Vec::new();
        for i in start..start + b {
            xs.extend(set.image(i).iter().map(|&v| v as f32 / 127.5 - 1.0));
        }
        let eps = noise.sample_f32(xs.len());
        let xt: Vec<f32> = xs.iter().zip(&eps).map(|(x, e)| x + t as f32 * e).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xt, [b, 1, 8, 8]), &device());
        let y = itarflow::Labels::Classes(set.labels[start..start + b].to_vec());
        total += values(model.log_prob(x, Tensor::full([b], t, &device()), &y)).iter().map(|&v| v as f64).sum::<f64>();
    }
    let expected = -total / 40.0 / (64.0 * std::f64::consts::LN_2);
    assert!((report.bpd - expected).abs() < 1e-9 * expected.abs().max(1.0), "{} vs {expected}", report.bpd);
    assert!((report.bpd_8bit - report.bpd - 7.0).abs() < 1e-12);
}

#[test]
fn the_library_training_loop_logs_checkpoints_and_stops_at_its_limits() {
    let set = Arc::new(synthetic_set());
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(9);
    c.checkpoint_every = 4;
    c.log_every = 2;
    let mut trainer = new_trainer(c);
    let mut events = Vec::new();
    let limits = itarflow::train::Limits { max_minutes: None, max_steps: Some(5) };
    let summary = itarflow::train::run(&mut trainer, dir.path(), set.clone(), None, limits, &mut |e| events.push(e)).unwrap();
    assert_eq!((summary.start_step, summary.end_step), (0, 5));
    let checkpoints: Vec<u64> =
        events.iter().filter_map(|e| if let itarflow::train::Event::Checkpoint { step } = e { Some(*step) } else { None }).collect();
    // At its interval, and once more where the step limit stopped the run.
    assert_eq!(checkpoints, [4, 5]);
    assert_eq!(itarflow::train::state::read_state(dir.path()).unwrap().step, 5);
    let logged: Vec<u64> =
        itarflow::train::metrics::read(&dir.path().join("metrics.jsonl")).unwrap().iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(logged, [2, 4]);
    // Resumed to the end: the log keeps the first invocation's lines and goes on.
    let mut resumed = Trainer::resume(dir.path()).unwrap();
    let summary = itarflow::train::run(&mut resumed, dir.path(), set, None, itarflow::train::Limits::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.end_step, 9);
    let logged: Vec<u64> =
        itarflow::train::metrics::read(&dir.path().join("metrics.jsonl")).unwrap().iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(logged, [2, 4, 6, 8, 9]);
    assert!(dir.path().join("samples/step_0000009.png").exists(), "the last step's grid");
}

#[test]
fn a_run_started_from_a_checkpoint_starts_from_its_weights_and_resumes_without_it() {
    let set = Arc::new(synthetic_set());
    let dir = tempfile::tempdir().unwrap();
    let mut first = new_trainer(config(6));
    run(&mut first, &set, 6);
    let ckpt = dir.path().join("first.safetensors");
    itarflow::checkpoint::save(&first.inference_model(), &ckpt).unwrap();

    let mut c = config(8);
    c.seed = 4;
    c.init = Some(ckpt.clone());
    let started = new_trainer(c.clone());
    let trained = weights(&first.inference_model());
    assert_eq!(weights(&started.model.valid()), trained, "the weights are the checkpoint's");
    assert_eq!(weights(started.ema.as_ref().unwrap()), trained, "the EMA starts from them too");
    let mut fresh = c.clone();
    fresh.init = None;
    assert_ne!(weights(&new_trainer(fresh).model.valid()), trained, "seed 4's own initialisation differs");

    // Stopped and resumed after the checkpoint it started from is gone: the same run.
    let mut straight = new_trainer(c.clone());
    let losses = run(&mut straight, &set, 8);
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let mut part = new_trainer(c);
    let mut resumed_losses = run(&mut part, &set, 3);
    part.save(&run_dir, 1.0).unwrap();
    drop(part);
    std::fs::remove_file(&ckpt).unwrap();
    let mut rest = Trainer::resume(&run_dir).unwrap();
    resumed_losses.extend(run(&mut rest, &set, 5));
    assert_eq!(losses, resumed_losses);
    assert_eq!(weights(&straight.model.valid()), weights(&rest.model.valid()));
}

#[test]
fn a_run_cannot_start_from_a_checkpoint_of_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = config(1).model;
    other.widths = vec![16];
    other.head_dim = 8;
    let ckpt = dir.path().join("narrow.safetensors");
    itarflow::checkpoint::save(&random_model(&other, 2), &ckpt).unwrap();
    let mut c = config(4);
    c.init = Some(ckpt.clone());
    let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let err = Trainer::new(c).err().expect("a checkpoint of width 16 cannot start a width-32 run").to_string();
    assert!(err.contains("narrow.safetensors") && err.contains("differs from the run's"), "{err}");
}

//! Training the classifier: cross-entropy, AdamW, linear warm-up then cosine decay of the learning
//! rate, random horizontal flips. Deterministic for a seed: the initialisation, the epochs'
//! shuffles and the flips all come from it.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use itarflow_base::ClassifierConfig;
use serde::{Deserialize, Serialize};

use super::{ClassifierError, LeNet};
use crate::data::ImageSet;
use crate::data::loader::{LoaderOptions, batches_per_epoch, make_batch, permutation};
use crate::train::schedule::learning_rate;

/// The training run's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTraining {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (after `warmup` steps; cosine decay to 0 at the end).
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub seed: u64,
    pub hflip: bool,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self { epochs: 12, batch_size: 128, lr: 2e-3, warmup: 200, weight_decay: 1e-4, seed: 0, hflip: true }
    }
}

/// What training reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// After each step (1-based count over the run).
    Step { step: u64, steps: u64, loss: f64 },
    /// After each epoch: the mean training loss of its steps and the test accuracy.
    Epoch { epoch: usize, epochs: usize, train_loss: f64, test_accuracy: f64, seconds: f64 },
}

/// Images (N, C, S, S) of a set as f32 in [-1, 1], from image `start`, `n` of them.
pub fn scaled(set: &ImageSet, start: usize, n: usize) -> Vec<f32> {
    (start..start + n).flat_map(|i| set.image(i).iter().map(|&p| p as f32 / 127.5 - 1.0)).collect()
}

fn cross_entropy(logits: Tensor<2>, labels: &[i64], k: usize) -> Tensor<1> {
    let n = labels.len();
    let onehot: Vec<f32> = labels.iter().flat_map(|&y| (0..k).map(move |j| if j as i64 == y { 1.0 } else { 0.0 })).collect();
    let target = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &logits.device());
    (log_softmax(logits, 1) * target).sum().neg().div_scalar(n as f64)
}

/// Trains a classifier of shape `config` on `train_set`, reporting the accuracy on `test_set`
/// after each epoch.
pub fn train(
    config: &ClassifierConfig,
    train_set: &ImageSet,
    test_set: &ImageSet,
    opts: &ClassifierTraining,
    events: &mut dyn FnMut(Event),
) -> Result<LeNet, ClassifierError> {
    config.validate().map_err(ClassifierError::Invalid)?;
    for (what, set) in [("training", train_set), ("test", test_set)] {
        if (set.channels, set.size) != (config.channels, config.img_size) || set.num_classes != config.num_classes {
            return Err(ClassifierError::Invalid(format!(
                "the {what} set has {} channel(s) of {}x{} in {} classes; the classifier is for {} of {}x{} in {}",
                set.channels, set.size, set.size, set.num_classes, config.channels, config.img_size, config.img_size, config.num_classes
            )));
        }
    }
    if opts.batch_size == 0 || train_set.len() < opts.batch_size || opts.epochs == 0 {
        return Err(ClassifierError::Invalid(format!(
            "need at least one epoch and a batch of 1..={} images (got {} epochs, batch {})",
            train_set.len(),
            opts.epochs,
            opts.batch_size
        )));
    }
    let device = crate::default_device();
    device.seed(opts.seed);
    let ad = device.autodiff();
    let mut model = LeNet::new(config, &ad);
    let mut optim = AdamWConfig::new()
        .with_beta_1(crate::train::config::adamw::BETA1 as f32)
        .with_beta_2(0.999)
        .with_epsilon(crate::train::config::adamw::EPSILON as f32)
        .with_weight_decay(opts.weight_decay as f32)
        .init();
    let loader = LoaderOptions { batch_size: opts.batch_size, seed: opts.seed, pad: 0, hflip: opts.hflip, prefetch: 0 };
    let bpe = batches_per_epoch(train_set, opts.batch_size);
    let total = bpe * opts.epochs as u64;
    for epoch in 0..opts.epochs {
        let start = Instant::now();
        let order = permutation(train_set.len(), opts.seed, epoch as u64);
        let mut loss_sum = 0.0;
        for b in 0..bpe {
            let step = epoch as u64 * bpe + b;
            let batch = make_batch(train_set, &loader, step, &order);
            let x = Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), &ad);
            let (_, logits) = model.forward(x);
            let loss = cross_entropy(logits, &batch.labels, config.num_classes);
            let value = loss.clone().detach().try_into_vec_as::<f32>().expect("f32 loss")[0] as f64;
            if !value.is_finite() {
                return Err(ClassifierError::Invalid(format!("the loss became {value} at step {step}: lower --lr")));
            }
            loss_sum += value;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(learning_rate(step, total, opts.warmup, opts.lr, 0.0), model, grads);
            events(Event::Step { step: step + 1, steps: total, loss: value });
        }
        let (test_accuracy, _) = accuracy(&model.valid(), test_set);
        events(Event::Epoch {
            epoch: epoch + 1,
            epochs: opts.epochs,
            train_loss: loss_sum / bpe as f64,
            test_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(model.valid())
}

/// The classes `model` assigns to every image of `set`.
pub fn predict(model: &LeNet, set: &ImageSet) -> Vec<usize> {
    let device = crate::default_device();
    let k = model.head.weight.dims()[1];
    let (c, s) = (set.channels, set.size);
    let mut out = Vec::with_capacity(set.len());
    for start in (0..set.len()).step_by(1000) {
        let n = 1000.min(set.len() - start);
        let x = Tensor::<4>::from_data(TensorData::new(scaled(set, start, n), [n, c, s, s]), &device);
        let logits = model.forward(x).1.try_into_vec_as::<f32>().expect("f32 logits");
        out.extend(
            logits.chunks(k).map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0),
        );
    }
    out
}

/// Fraction of `set` classified correctly, overall and per class.
pub fn accuracy(model: &LeNet, set: &ImageSet) -> (f64, Vec<f64>) {
    let predicted = predict(model, set);
    let mut right = vec![0usize; set.num_classes];
    let mut count = vec![0usize; set.num_classes];
    for (p, &y) in predicted.iter().zip(&set.labels) {
        count[y as usize] += 1;
        right[y as usize] += usize::from(*p as i64 == y);
    }
    let overall = right.iter().sum::<usize>() as f64 / set.len().max(1) as f64;
    (overall, right.iter().zip(&count).map(|(&r, &c)| r as f64 / c.max(1) as f64).collect())
}

//! Negative log-likelihood on a data set, in bits per dimension.
//!
//! Convention: images scaled to [-1, 1] (padding included when the model was trained padded),
//! noised as x_t = x + t eps with eps from a fixed seed, labels given; reported as
//! - `bpd`: -log p(x_t | t, y) / (D ln 2), the continuous density of x_t on the [-1, 1] scale;
//! - `bpd_8bit`: bpd + 7, the same density on the [0, 256) scale of 8-bit images
//!   (log2 of the 128x stretch per dimension); no dequantisation noise besides x_t's own.

use burn::prelude::*;
use serde::Serialize;

use crate::data::{ImageSet, LoaderOptions, loader::make_batch};
use crate::model::{ITarFlow, Labels};

#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    pub images: usize,
    pub t: f64,
    pub bpd: f64,
    pub bpd_8bit: f64,
    pub convention: String,
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllOptions {
    /// Padding that brings the data to the model's size.
    pub pad: usize,
    /// Noise level.
    pub t: f64,
    pub batch_size: usize,
    /// First images only (0 = all).
    pub limit: usize,
    /// Seed of the noise eps.
    pub seed: u64,
}

/// bits/dim of `set` (the first `limit` images, all when 0) at noise level `t`.
pub fn bits_per_dim(model: &ITarFlow, set: &ImageSet, opts: &NllOptions, progress: &mut dyn FnMut(usize, usize)) -> NllReport {
    let NllOptions { pad, t, batch_size, limit, seed } = *opts;
    let n = if limit == 0 { set.len() } else { limit.min(set.len()) };
    let device = model.device();
    let d = model.config.data_dim() as f64;
    let order: Vec<usize> = (0..n).collect();
    let mut total = 0.0f64;
    let mut done = 0;
    let mut noise = itarflow_base::GaussianNoise::new(seed);
    while done < n {
        let b = batch_size.min(n - done);
        let opts = LoaderOptions { batch_size: b, seed: 0, pad, hflip: false, prefetch: 1 };
        // Batch `0` of an "epoch" made of exactly these images.
        let batch = make_batch(set, &opts, 0, &order[done..done + b]);
        let eps = noise.sample_f32(batch.images.len());
        let xt: Vec<f32> = batch.images.iter().zip(&eps).map(|(x, e)| x + t as f32 * e).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xt, batch.shape), &device);
        let labels = if model.config.num_classes > 0 { Labels::Classes(batch.labels.clone()) } else { Labels::None };
        let lp = model.log_prob(x, Tensor::full([b], t, &device), &labels);
        total += lp.try_into_vec_as::<f32>().expect("f32").iter().map(|&v| v as f64).sum::<f64>();
        done += b;
        progress(done, n);
    }
    let bpd = -total / n as f64 / (d * std::f64::consts::LN_2);
    NllReport {
        images: n,
        t,
        bpd,
        bpd_8bit: bpd + 7.0,
        convention: format!(
            "-log p(x_t | t={t}, y) / (D ln 2) for x in [-1,1], x_t = x + t*eps (eps seeded), D = {}; bpd_8bit adds log2(128) = 7 for the [0,256) scale",
            d
        ),
    }
}

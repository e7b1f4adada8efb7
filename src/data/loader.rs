//! Batches for training: a deterministic function of (seed, step), so that a resumed run sees
//! exactly the batches an uninterrupted one would, built ahead of time on a background thread.
//!
//! Step s belongs to epoch s / batches_per_epoch; each epoch shuffles the set with a permutation
//! drawn from (seed, epoch); the last incomplete batch of an epoch is dropped. Images are scaled
//! to [-1, 1], padded with -1 and flipped horizontally with probability 1/2 when asked.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use itarflow_base::GaussianNoise;

use super::ImageSet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub seed: u64,
    /// Pixels of padding on each side (e.g. 2 turns 28 px into 32 px).
    pub pad: usize,
    pub hflip: bool,
    /// Batches prepared ahead.
    pub prefetch: usize,
}

/// One batch: images (B, C, S, S) in [-1, 1] and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub step: u64,
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub shape: [usize; 4],
}

fn mix(a: u64, b: u64) -> u64 {
    a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xD1B5_4A32_D192_ED03).rotate_left(29)
}

/// The shuffled order of epoch `epoch`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = GaussianNoise::new(mix(seed, epoch));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.next_below(i as u64 + 1) as usize);
    }
    order
}

/// Number of whole batches per epoch.
pub fn batches_per_epoch(set: &ImageSet, batch_size: usize) -> u64 {
    (set.len() / batch_size) as u64
}

/// Builds the batch of `step` given the epoch's `order`.
pub fn make_batch(set: &ImageSet, opts: &LoaderOptions, step: u64, order: &[usize]) -> Batch {
    let bpe = batches_per_epoch(set, opts.batch_size);
    let first = ((step % bpe) as usize) * opts.batch_size;
    let (c, s, p) = (set.channels, set.size, opts.pad);
    let out = s + 2 * p;
    let mut images = vec![-1.0f32; opts.batch_size * c * out * out];
    let mut labels = Vec::with_capacity(opts.batch_size);
    let mut flips = GaussianNoise::new(mix(opts.seed ^ 0x666C_6970, step));
    for (b, &i) in order[first..first + opts.batch_size].iter().enumerate() {
        let flip = opts.hflip && flips.next_below(2) == 1;
        let src = set.image(i);
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let sx = if flip { s - 1 - x } else { x };
                    let v = src[(ch * s + y) * s + sx] as f32 / 127.5 - 1.0;
                    images[((b * c + ch) * out + y + p) * out + x + p] = v;
                }
            }
        }
        labels.push(set.labels[i]);
    }
    Batch { step, images, labels, shape: [opts.batch_size, c, out, out] }
}

/// Produces batches for steps `start, start + 1, ...` on a background thread.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing from `start_step`. Panics if the set has fewer images than one batch
    /// (checked by the caller with a clear error).
    pub fn new(set: Arc<ImageSet>, opts: LoaderOptions, start_step: u64) -> Self {
        assert!(set.len() >= opts.batch_size, "the data set is smaller than one batch");
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(opts.prefetch.max(1));
        let handle = std::thread::spawn(move || {
            let bpe = batches_per_epoch(&set, opts.batch_size);
            let mut epoch = u64::MAX;
            let mut order = Vec::new();
            for step in start_step.. {
                if step / bpe != epoch {
                    epoch = step / bpe;
                    order = permutation(set.len(), opts.seed, epoch);
                }
                if tx.send(make_batch(&set, &opts, step, &order)).is_err() {
                    return; // the trainer is gone
                }
            }
        });
        Self { rx: Some(rx), handle: Some(handle) }
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        self.rx.as_ref().expect("loader is running").recv().expect("the loader thread runs until dropped")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        ImageSet {
            channels: 1,
            size: 2,
            pixels: (0..n * 4).map(|v| (v % 256) as u8).collect(),
            labels: (0..n as i64).collect(),
            num_classes: n,
            class_names: vec![],
        }
    }

    #[test]
    fn epochs_are_permutations_and_differ() {
        let a = permutation(100, 1, 0);
        let b = permutation(100, 1, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, permutation(100, 1, 0));
    }

    #[test]
    fn resumed_loader_yields_the_same_batches() {
        let s = Arc::new(set(10));
        let opts = LoaderOptions { batch_size: 3, seed: 9, pad: 1, hflip: true, prefetch: 2 };
        let mut full = Loader::new(s.clone(), opts, 0);
        let all: Vec<Batch> = (0..8).map(|_| full.next_batch()).collect();
        let mut resumed = Loader::new(s, opts, 5);
        for b in &all[5..] {
            assert_eq!(&resumed.next_batch(), b);
        }
        // Each epoch of 3 batches uses 9 distinct images.
        let mut seen: Vec<i64> = all[..3].iter().flat_map(|b| b.labels.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
    }

    #[test]
    fn pixels_are_scaled_padded_and_flipped() {
        let s = set(1);
        let opts = LoaderOptions { batch_size: 1, seed: 0, pad: 1, hflip: false, prefetch: 1 };
        let b = make_batch(&s, &opts, 0, &[0]);
        assert_eq!(b.shape, [1, 1, 4, 4]);
        // Pixel bytes 0,1,2,3 -> -1, -0.992, -0.984, -0.976; border -1.
        let row1 = &b.images[4..8];
        assert_eq!(row1[0], -1.0);
        assert!((row1[2] - (1.0 / 127.5 - 1.0)).abs() < 1e-6);
        // With flipping forced by searching a step that flips.
        let flip_opts = LoaderOptions { hflip: true, ..opts };
        let flipped = (0..64).map(|st| make_batch(&s, &flip_opts, st, &[0])).find(|f| f.images != b.images).unwrap();
        assert!((flipped.images[5] - b.images[6]).abs() < 1e-6 && (flipped.images[6] - b.images[5]).abs() < 1e-6);
    }
}

//! Training data: image sets from MNIST-style IDX files, CIFAR-10 binaries or folders of images,
//! and a loader that shuffles deterministically, augments and prefetches batches in the background.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;

use std::path::PathBuf;

use thiserror::Error;

pub use loader::{Batch, Loader, LoaderOptions};

#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} not found ({hint})")]
    NotFound { path: PathBuf, hint: String },
    #[error("{path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.into(), source }
}

/// Images held as bytes (N, C, H, W), values 0..=255, with integer labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub channels: usize,
    pub size: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub num_classes: usize,
    /// Class names, when the source has them (image folders).
    pub class_names: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.channels * self.size * self.size;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The first `n` images (for quick evaluations).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.channels * self.size * self.size);
        self.labels.truncate(n);
        self
    }
}

/// The splits of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST-style IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in the directory.
    Idx,
    /// CIFAR-10 binary version: data_batch_{1..5}.bin and test_batch.bin in the directory.
    Cifar10,
    /// One sub-folder per class of PNG/JPEG images; `train/` and `test/` sub-directories when present.
    Folder,
}

/// The directory the Debian package `dataset-fashion-mnist` installs.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Names of a set's classes: the folders' for image folders, Fashion-MNIST's for 10-class IDX
/// files from its Debian directory, CIFAR-10's for CIFAR, else "class k".
pub fn class_names(set: &ImageSet, kind: &DatasetKind, dir: &std::path::Path) -> Vec<String> {
    if set.class_names.len() == set.num_classes {
        return set.class_names.clone();
    }
    let known: Option<&[&str]> = match kind {
        DatasetKind::Idx if set.num_classes == 10 && dir == std::path::Path::new(FASHION_MNIST_DIR) => Some(&FASHION_MNIST_CLASSES),
        DatasetKind::Cifar10 => Some(&CIFAR10_CLASSES),
        _ => None,
    };
    match known {
        Some(names) => names.iter().map(|s| s.to_string()).collect(),
        None => (0..set.num_classes).map(|k| format!("class {k}")).collect(),
    }
}

/// Loads a split of a dataset; `size` resizes folder images (IDX and CIFAR keep their own size).
pub fn load(kind: &DatasetKind, dir: &std::path::Path, split: Split, size: Option<usize>) -> Result<ImageSet, DataError> {
    match kind {
        DatasetKind::Idx => idx::load_split(dir, split),
        DatasetKind::Cifar10 => cifar::load_split(dir, split),
        DatasetKind::Folder => {
            let size = size.ok_or_else(|| DataError::Invalid("an image folder needs --img-size to resize to".into()))?;
            let sub = dir.join(match split {
                Split::Train => "train",
                Split::Test => "test",
            });
            folder::load(if sub.is_dir() { &sub } else { dir }, size, 3)
        }
    }
}

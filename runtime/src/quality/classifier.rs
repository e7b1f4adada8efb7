//! The quality classifier on tract: features and logits of images. It always runs on tract's
//! CPU runtime, whatever the generator runs on, so that every provider's images are judged by
//! the same arithmetic (it costs ~2 M multiply-adds an image: seconds for 10,000).

use std::path::{Path, PathBuf};

use itarflow_base::ClassifierConfig;
use ndarray::{Array2, ArrayView4};

use super::reference::{self, ClassifierCard, ReferenceStats};
use crate::RtError;
use crate::provider::tract::TractGraph;
use crate::provider::{HostTensor, run_host};

/// Images per run of the classifier's graph.
const CHUNK: usize = 500;

/// The classifier's graph alone (what `itarflow train-classifier` runs to measure the reference
/// statistics before there is a card).
pub struct ClassifierGraph {
    pub path: PathBuf,
    pub config: ClassifierConfig,
    graph: TractGraph,
}

/// A classifier directory: graph, card and the test set's statistics.
pub struct Classifier {
    pub dir: PathBuf,
    pub card: ClassifierCard,
    pub reference: ReferenceStats,
    pub graph: ClassifierGraph,
}

/// Features (N, F) and logits (N, K) of N images.
pub struct Outputs {
    pub features: Array2<f32>,
    pub logits: Array2<f32>,
}

impl Outputs {
    /// The class each image is assigned (the largest logit).
    pub fn predictions(&self) -> Vec<usize> {
        self.logits
            .rows()
            .into_iter()
            .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (k, &v)| if v > best.1 { (k, v) } else { best }).0)
            .collect()
    }
}

impl Classifier {
    /// Loads a classifier directory (`classifier.onnx`, `card.json`, `reference.npz`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, RtError> {
        let dir = dir.as_ref();
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let card = reference::read_card(&dir)?;
        let stats = ReferenceStats::read(&dir.join(reference::REFERENCE_FILE), &card.config)?;
        let graph = ClassifierGraph::load(&dir.join(reference::GRAPH_FILE), card.config)?;
        Ok(Self { dir, card, reference: stats, graph })
    }

    /// Features and logits of images (N, C, H, W) in [-1, 1].
    pub fn run(&self, images: ArrayView4<f32>) -> Result<Outputs, RtError> {
        self.graph.run(images)
    }
}

impl ClassifierGraph {
    /// Loads the classifier's ONNX graph at `path`, of shape `config`.
    pub fn load(path: &Path, config: ClassifierConfig) -> Result<Self, RtError> {
        if !path.is_file() {
            return Err(RtError::Package(format!("{} is missing: export it with `itarflow train-classifier`", path.display())));
        }
        Ok(Self { path: path.to_path_buf(), config, graph: TractGraph::load(path)? })
    }

    /// Features and logits of images (N, C, H, W) in [-1, 1].
    pub fn run(&self, images: ArrayView4<f32>) -> Result<Outputs, RtError> {
        let c = &self.config;
        let shape = images.shape();
        if shape[1..] != [c.channels, c.img_size, c.img_size] {
            return Err(RtError::Input(format!(
                "the classifier takes images of {}x{}x{}, got {:?}",
                c.channels,
                c.img_size,
                c.img_size,
                &shape[1..]
            )));
        }
        let n = shape[0];
        let per = c.channels * c.img_size * c.img_size;
        let data: Vec<f32> = images.iter().copied().collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(RtError::Input(format!("image {} holds a non-finite value", i / per)));
        }
        let (mut features, mut logits) = (Vec::with_capacity(n * c.features), Vec::with_capacity(n * c.num_classes));
        for start in (0..n).step_by(CHUNK) {
            let m = CHUNK.min(n - start);
            let x = HostTensor::F32(vec![m, c.channels, c.img_size, c.img_size], data[start * per..(start + m) * per].to_vec());
            let outs = run_host(&self.graph, &[x])?;
            let [f, l] = outs.as_slice() else {
                return Err(RtError::Package(format!("{} has {} outputs, expected features and logits", self.path.display(), outs.len())));
            };
            features.extend_from_slice(f.f32()?);
            logits.extend_from_slice(l.f32()?);
        }
        let wrap = |e: ndarray::ShapeError| RtError::Package(format!("{}: outputs of unexpected size ({e})", self.path.display()));
        Ok(Outputs {
            features: Array2::from_shape_vec((n, c.features), features).map_err(wrap)?,
            logits: Array2::from_shape_vec((n, c.num_classes), logits).map_err(wrap)?,
        })
    }
}

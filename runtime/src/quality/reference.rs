//! What a classifier directory holds besides its graph: the card (`card.json`: shape, test
//! accuracy, the FLD floor) and the statistics of the test set's features (`reference.npz`), so
//! that evaluation needs neither Burn nor the dataset.
//!
//! `reference.npz` (float64): `test_mean` (F), `test_cov` (F, F), `class_mean` (K, F),
//! `class_cov` (K, F, F); (int64) `class_count` (K), `test_count` (1).

use std::path::Path;

use itarflow_base::{Array, ArrayData, ClassifierConfig, Npz};
use serde::{Deserialize, Serialize};

use super::frechet::Gaussian;
use crate::RtError;

pub const GRAPH_FILE: &str = "classifier.onnx";
pub const CARD_FILE: &str = "card.json";
pub const REFERENCE_FILE: &str = "reference.npz";

/// The FLD of `num` training images (the first `num / K` of each class) against the test set:
/// the best a generator can expect at that sample size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub num: usize,
    pub fld: f64,
    /// Per class (num / K training images of the class against the test images of the class).
    pub per_class: Vec<f64>,
}

/// How the classifier was trained and how well it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCard {
    pub config: ClassifierConfig,
    pub dataset: String,
    pub class_names: Vec<String>,
    /// Fraction of the test set classified correctly.
    pub test_accuracy: f64,
    pub per_class_accuracy: Vec<f64>,
    pub floors: Vec<Floor>,
    /// The training run (command line, epochs, seed, timing), for the record.
    pub training: serde_json::Value,
}

impl ClassifierCard {
    /// The floor measured at `num` images, if one was.
    pub fn floor(&self, num: usize) -> Option<&Floor> {
        self.floors.iter().find(|f| f.num == num)
    }
}

/// Statistics of the test set's features: all of it and each class.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceStats {
    pub test: Gaussian,
    pub classes: Vec<Gaussian>,
}

fn f64s(npz: &Npz, name: &str, shape: &[usize]) -> Result<Vec<f64>, RtError> {
    let path = npz.path().display().to_string();
    let a = npz
        .get(name)
        .ok_or_else(|| RtError::Package(format!("{path} has no '{name}': write it again with `itarflow train-classifier`")))?;
    if a.shape != shape {
        return Err(RtError::Package(format!("{path}: '{name}' has shape {:?}, expected {shape:?}", a.shape)));
    }
    match &a.data {
        ArrayData::F64(v) => Ok(v.clone()),
        other => Err(RtError::Package(format!("{path}: '{name}' is {}, expected float64", other.dtype_name()))),
    }
}

fn counts(npz: &Npz, name: &str, len: usize) -> Result<Vec<usize>, RtError> {
    let path = npz.path().display().to_string();
    let (shape, v) = npz.i64(name, 1, "(K,)", "write it again with `itarflow train-classifier`").map_err(|e| RtError::Npz(Box::new(e)))?;
    if shape != [len] || v.iter().any(|&c| c < 2) {
        return Err(RtError::Package(format!("{path}: '{name}' must hold {len} counts of at least 2, got {v:?}")));
    }
    Ok(v.into_iter().map(|c| c as usize).collect())
}

impl ReferenceStats {
    pub fn read(path: &Path, c: &ClassifierConfig) -> Result<Self, RtError> {
        let npz = Npz::read(path).map_err(|e| RtError::Npz(Box::new(e)))?;
        let (f, k) = (c.features, c.num_classes);
        let wrap = |e: RtError| match e {
            RtError::Input(m) => RtError::Package(format!("{}: {m}", path.display())),
            other => other,
        };
        let test_count = counts(&npz, "test_count", 1)?[0];
        let test = Gaussian::new(f64s(&npz, "test_mean", &[f])?, f64s(&npz, "test_cov", &[f, f])?, test_count).map_err(wrap)?;
        let means = f64s(&npz, "class_mean", &[k, f])?;
        let covs = f64s(&npz, "class_cov", &[k, f, f])?;
        let class_count = counts(&npz, "class_count", k)?;
        let classes = (0..k)
            .map(|i| {
                Gaussian::new(means[i * f..(i + 1) * f].to_vec(), covs[i * f * f..(i + 1) * f * f].to_vec(), class_count[i]).map_err(wrap)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { test, classes })
    }

    /// Writes the statistics to `path` (atomically).
    pub fn write(&self, path: &Path) -> Result<(), RtError> {
        let (f, k) = (self.test.dim(), self.classes.len());
        let arr = |shape: &[usize], data: Vec<f64>| Array { shape: shape.to_vec(), data: ArrayData::F64(data) };
        let mut npz = Npz::new(path);
        npz.insert("test_mean", arr(&[f], self.test.mean.clone()));
        npz.insert("test_cov", arr(&[f, f], self.test.cov.clone()));
        npz.insert("test_count", Array::i64(&[1], vec![self.test.count as i64]));
        npz.insert("class_mean", arr(&[k, f], self.classes.iter().flat_map(|g| g.mean.clone()).collect()));
        npz.insert("class_cov", arr(&[k, f, f], self.classes.iter().flat_map(|g| g.cov.clone()).collect()));
        npz.insert("class_count", Array::i64(&[k], self.classes.iter().map(|g| g.count as i64).collect()));
        npz.write().map_err(|e| RtError::Npz(Box::new(e)))
    }
}

/// Reads `card.json` in `dir`.
pub fn read_card(dir: &Path) -> Result<ClassifierCard, RtError> {
    let path = dir.join(CARD_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        RtError::Package(format!("cannot read {}: {e} (a classifier directory is made by `itarflow train-classifier`)", path.display()))
    })?;
    let card: ClassifierCard =
        serde_json::from_str(&text).map_err(|e| RtError::Package(format!("{} is not a classifier card: {e}", path.display())))?;
    card.config.validate().map_err(|e| RtError::Package(format!("{}: {e}", path.display())))?;
    if card.class_names.len() != card.config.num_classes {
        return Err(RtError::Package(format!(
            "{}: {} class names for {} classes",
            path.display(),
            card.class_names.len(),
            card.config.num_classes
        )));
    }
    Ok(card)
}

//! Writing a classifier directory: weights, the exported graph, and what evaluation reads beside
//! them, all measured through the exported graph itself (the arithmetic `itarflow-rt` will use):
//! the test accuracy, the test set's feature statistics (overall and per class) and the FLD
//! floors (training images against the test set). Written to a temporary directory and moved
//! into place, so a failure never leaves half a directory.

use std::path::Path;

use itarflow_base::ClassifierConfig;
use itarflow_rt::quality::reference::{self, ClassifierCard, Floor, ReferenceStats};
use itarflow_rt::quality::{ClassifierGraph, Gaussian, frechet_distance};
use ndarray::{Array2, ArrayView4};

use super::train::scaled;
use super::{ClassifierError, LeNet, weights};
use crate::data::ImageSet;

/// Sample sizes the floor is measured at (the evaluator's default and the ablations').
pub const FLOOR_SIZES: [usize; 2] = [2_000, 10_000];

pub const WEIGHTS_FILE: &str = "classifier.safetensors";

/// What the directory's card says, and where it went.
pub struct BuildReport {
    pub card: ClassifierCard,
}

fn features_of(graph: &ClassifierGraph, set: &ImageSet, idx: &[usize]) -> Result<(Array2<f32>, Vec<usize>), ClassifierError> {
    let c = &graph.config;
    let per = c.channels * c.img_size * c.img_size;
    let data: Vec<f32> = idx.iter().flat_map(|&i| scaled(set, i, 1)).collect();
    debug_assert_eq!(data.len(), idx.len() * per);
    let x = ArrayView4::from_shape((idx.len(), c.channels, c.img_size, c.img_size), &data)
        .map_err(|e| ClassifierError::Invalid(e.to_string()))?;
    let out = graph.run(x)?;
    let predictions = out.predictions();
    Ok((out.features, predictions))
}

fn fit(features: &Array2<f32>) -> Result<Gaussian, ClassifierError> {
    Ok(Gaussian::fit(features.as_slice().expect("standard layout"), features.ncols())?)
}

fn rows(features: &Array2<f32>, which: impl Iterator<Item = usize>) -> Array2<f32> {
    let idx: Vec<usize> = which.collect();
    features.select(ndarray::Axis(0), &idx)
}

/// Indices of the images of class `c`.
fn of_class(labels: &[i64], c: usize) -> impl Iterator<Item = usize> + '_ {
    labels.iter().enumerate().filter(move |(_, y)| **y as usize == c).map(|(i, _)| i)
}

/// The first `per_class` images of each class of `set`, in the set's order.
fn first_per_class(set: &ImageSet, per_class: usize) -> Option<Vec<usize>> {
    let mut taken = vec![0usize; set.num_classes];
    let mut idx = Vec::new();
    for (i, &y) in set.labels.iter().enumerate() {
        let y = y as usize;
        if taken[y] < per_class {
            taken[y] += 1;
            idx.push(i);
        }
    }
    taken.iter().all(|&t| t == per_class).then_some(idx)
}

/// Writes `model` and everything evaluation needs to the directory `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_directory(
    out: &Path,
    config: &ClassifierConfig,
    model: &LeNet,
    train_set: &ImageSet,
    test_set: &ImageSet,
    dataset: &str,
    class_names: Vec<String>,
    training: serde_json::Value,
) -> Result<BuildReport, ClassifierError> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "classifier".into());
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ClassifierError::Write { path: p.clone(), source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(werr(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(werr(&tmp))?;
    let result = (|| {
        weights::save(model, config, &tmp.join(WEIGHTS_FILE))?;
        itarflow_export::classifier::write_classifier(config, &model.to_named(), &tmp.join(reference::GRAPH_FILE))?;
        let graph = ClassifierGraph::load(&tmp.join(reference::GRAPH_FILE), *config)?;
        let k = config.num_classes;
        let all: Vec<usize> = (0..test_set.len()).collect();
        let (test_features, predicted) = features_of(&graph, test_set, &all)?;
        let mut right = vec![0usize; k];
        for (p, &y) in predicted.iter().zip(&test_set.labels) {
            right[y as usize] += usize::from(*p as i64 == y);
        }
        let per_class_accuracy: Vec<f64> = (0..k).map(|c| right[c] as f64 / of_class(&test_set.labels, c).count().max(1) as f64).collect();
        let test_accuracy = right.iter().sum::<usize>() as f64 / test_set.len() as f64;
        let classes = (0..k).map(|c| fit(&rows(&test_features, of_class(&test_set.labels, c)))).collect::<Result<Vec<_>, _>>()?;
        let stats = ReferenceStats { test: fit(&test_features)?, classes };
        stats.write(&tmp.join(reference::REFERENCE_FILE))?;
        let mut floors = Vec::new();
        for num in FLOOR_SIZES {
            let Some(idx) = first_per_class(train_set, num / k).filter(|_| num.is_multiple_of(k)) else { continue };
            let labels: Vec<i64> = idx.iter().map(|&i| train_set.labels[i]).collect();
            let (f, _) = features_of(&graph, train_set, &idx)?;
            let fld = frechet_distance(&fit(&f)?, &stats.test)?;
            let per_class = (0..k)
                .map(|c| Ok(frechet_distance(&fit(&rows(&f, of_class(&labels, c)))?, &stats.classes[c])?))
                .collect::<Result<Vec<f64>, ClassifierError>>()?;
            floors.push(Floor { num, fld, per_class });
        }
        let card = ClassifierCard {
            config: *config,
            dataset: dataset.to_string(),
            class_names: class_names.clone(),
            test_accuracy,
            per_class_accuracy,
            floors,
            training: training.clone(),
        };
        let json = serde_json::to_string_pretty(&card).map_err(|e| ClassifierError::Invalid(e.to_string()))?;
        let path = tmp.join(reference::CARD_FILE);
        itarflow_base::write_atomic(&path, |w| std::io::Write::write_all(w, json.as_bytes())).map_err(werr(&path))?;
        Ok::<_, ClassifierError>(card)
    })();
    match result {
        Ok(card) => {
            itarflow_base::atomic::replace_dir(&tmp, out).map_err(werr(out))?;
            Ok(BuildReport { card })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

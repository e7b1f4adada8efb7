//! Judging a set of images: the Fréchet LeNet distance to the test set (all of it and per class),
//! and how often the classifier assigns conditional samples the class they were asked for.

use ndarray::ArrayView4;
use serde::Serialize;

use super::classifier::Classifier;
use super::frechet::{Gaussian, frechet_distance};
use crate::RtError;

/// One class's figures (conditional images only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassQuality {
    pub class: usize,
    pub name: String,
    /// Images asked for with this class.
    pub count: usize,
    /// Fraction of them the classifier assigns to this class.
    pub accuracy: f64,
    /// FLD of these images against the test images of this class (None below 2 images).
    pub fld: Option<f64>,
    /// The per-class floor at the same total number of images, when the card has one.
    pub floor_fld: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityReport {
    pub num_images: usize,
    /// Fréchet LeNet distance between the images' features and the test set's.
    pub fld: f64,
    /// The FLD of as many training images against the test set, when the card has it.
    pub floor_fld: Option<f64>,
    /// Fraction of conditional images assigned their requested class (None without any).
    pub class_accuracy: Option<f64>,
    /// Fraction of all images per class the classifier assigns (a check of mode coverage).
    pub predicted_share: Vec<f64>,
    pub per_class: Vec<ClassQuality>,
    /// The classifier's own test accuracy, to read the accuracies against.
    pub classifier_test_accuracy: f64,
}

/// Evaluates images (N, C, H, W) in [-1, 1] sampled with `labels` (N; -1 = unconditional).
pub fn evaluate(classifier: &Classifier, images: ArrayView4<f32>, labels: &[i64]) -> Result<QualityReport, RtError> {
    let n = images.shape()[0];
    if labels.len() != n {
        return Err(RtError::Input(format!("{} labels for {n} images", labels.len())));
    }
    let card = &classifier.card;
    let (k, f) = (card.config.num_classes, card.config.features);
    if let Some(&bad) = labels.iter().find(|&&y| y < -1 || y >= k as i64) {
        return Err(RtError::Input(format!("label {bad} is outside -1..{k} (the classifier's classes)")));
    }
    let out = classifier.run(images)?;
    let predicted = out.predictions();
    let features = out.features.as_slice().expect("standard layout");
    let fld = frechet_distance(&Gaussian::fit(features, f)?, &classifier.reference.test)?;
    let mut counts = vec![0usize; k];
    for &p in &predicted {
        counts[p] += 1;
    }
    let share: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    let floor = card.floor(n);
    let mut per_class = Vec::new();
    let (mut hits, mut conditional) = (0usize, 0usize);
    for class in 0..k {
        let idx: Vec<usize> = (0..n).filter(|&i| labels[i] == class as i64).collect();
        if idx.is_empty() {
            continue;
        }
        let right = idx.iter().filter(|&&i| predicted[i] == class).count();
        hits += right;
        conditional += idx.len();
        let rows: Vec<f32> = idx.iter().flat_map(|&i| features[i * f..(i + 1) * f].iter().copied()).collect();
        let fld =
            if idx.len() >= 2 { Some(frechet_distance(&Gaussian::fit(&rows, f)?, &classifier.reference.classes[class])?) } else { None };
        per_class.push(ClassQuality {
            class,
            name: card.class_names[class].clone(),
            count: idx.len(),
            accuracy: right as f64 / idx.len() as f64,
            fld,
            floor_fld: floor.and_then(|fl| fl.per_class.get(class).copied()),
        });
    }
    Ok(QualityReport {
        num_images: n,
        fld,
        floor_fld: floor.map(|fl| fl.fld),
        class_accuracy: (conditional > 0).then(|| hits as f64 / conditional as f64),
        predicted_share: share,
        per_class,
        classifier_test_accuracy: card.test_accuracy,
    })
}

impl QualityReport {
    /// A few lines for people: FLD beside its floor, the class accuracy, the worst classes.
    pub fn summary(&self) -> String {
        let mut s = format!("FLD {:.3} on {} images", self.fld, self.num_images);
        if let Some(f) = self.floor_fld {
            s += &format!(" (floor: {f:.3}, as many training images against the test set)");
        }
        if let Some(a) = self.class_accuracy {
            s += &format!(
                "\nclass accuracy {:.1}% (the classifier's own test accuracy: {:.1}%)",
                100.0 * a,
                100.0 * self.classifier_test_accuracy
            );
        }
        if !self.per_class.is_empty() {
            s += "\nper class (accuracy, FLD):";
            for c in &self.per_class {
                let fld = c.fld.map_or("-".to_string(), |v| format!("{v:.3}"));
                s += &format!("\n  {:>2} {:<12} {:>5.1}%  {fld}", c.class, c.name, 100.0 * c.accuracy);
            }
        }
        s
    }
}

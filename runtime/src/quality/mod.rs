//! Measured sample quality without Burn or the dataset: a LeNet-style classifier of the
//! dataset's images (trained and exported by `itarflow train-classifier`, shipped under
//! `models/classifier`) gives
//!
//! - the Fréchet LeNet distance (FLD): FID's formula over the classifier's penultimate features,
//!   generated images against the test set's statistics (stored with the classifier), overall and
//!   per class, beside the floor (as many training images against the test set);
//! - the class accuracy of conditional samples: how often the classifier assigns the class asked
//!   for;
//!
//! and the paper's ablations of the sampler's settings ([`ablation`]).

pub mod ablation;
pub mod classifier;
pub mod frechet;
pub mod generate;
pub mod reference;
pub mod report;

pub use classifier::{Classifier, ClassifierGraph, Outputs};
pub use frechet::{Gaussian, frechet_distance};
pub use generate::{Generated, balanced_labels, generate, generate_from};
pub use reference::{ClassifierCard, Floor, ReferenceStats};
pub use report::{ClassQuality, QualityReport, evaluate};

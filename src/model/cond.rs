//! Class conditioning. A label y in 0..K selects class embedding y; y < 0 (or no label at all)
//! selects the mean of all class embeddings, the unconditional branch used for guidance.
//! Both are written as one (B, K) weight matrix times the (K, C) embedding table: a one-hot row or
//! a uniform 1/K row.

use burn::prelude::*;

/// Labels for a batch: per-image classes (negative = unconditional) or none at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    None,
    Classes(Vec<i64>),
}

impl Labels {
    /// The same labels with every entry set to unconditional, for the guidance branch.
    pub fn unconditional(batch: usize) -> Self {
        Labels::Classes(vec![-1; batch])
    }

    /// The labels of images `start..start + len` of the batch.
    pub fn part(&self, start: usize, len: usize) -> Self {
        match self {
            Labels::None => Labels::None,
            Labels::Classes(v) => Labels::Classes(v[start..start + len].to_vec()),
        }
    }

    /// Per-image label, -1 for unconditional.
    pub fn to_vec(&self, batch: usize) -> Vec<i64> {
        match self {
            Labels::None => vec![-1; batch],
            Labels::Classes(v) => v.clone(),
        }
    }
}

/// The (B, K) matrix that mixes the class embeddings for `labels`. Labels >= K are a caller
/// error (checked where labels enter the program).
pub fn class_weights(labels: &Labels, batch: usize, num_classes: usize, device: &Device) -> Tensor<2> {
    let mut w = vec![0f32; batch * num_classes];
    for (b, &y) in labels.to_vec(batch).iter().enumerate() {
        let row = &mut w[b * num_classes..(b + 1) * num_classes];
        if y < 0 {
            row.fill(1.0 / num_classes as f32);
        } else {
            row[y as usize] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(w, [batch, num_classes]), device)
}

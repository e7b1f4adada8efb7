//! The shape of the quality classifier: a LeNet-style CNN of a dataset's images whose
//! penultimate-layer features give the Fréchet LeNet distance (FLD) and whose logits give the
//! class accuracy of conditional samples. Shared by its training (Burn, `itarflow
//! train-classifier`), its ONNX graph (`itarflow-export`) and evaluation (`itarflow-rt`).
//!
//! conv1 5x5 (padding 2) -> ReLU -> 2x2 average pool -> conv2 5x5 -> ReLU -> 2x2 average pool ->
//! flatten (C, H, W order) -> fc1 -> ReLU -> fc2 -> ReLU (the features) -> head (the logits).
//! Parameter names and layouts are PyTorch's (`conv1.weight` (O, C, 5, 5), `fc1.weight` (out, in)).

use serde::{Deserialize, Serialize};

/// The width of every convolution kernel.
pub const KERNEL: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub channels: usize,
    pub img_size: usize,
    pub num_classes: usize,
    /// Output channels of the first and second convolutions.
    pub conv1: usize,
    pub conv2: usize,
    /// Width of fc1.
    pub hidden: usize,
    /// Width of fc2: the feature vector the Fréchet distance is taken over.
    pub features: usize,
}

impl ClassifierConfig {
    /// The project's classifier for images of `channels` x `img_size`^2 in `num_classes` classes
    /// (LeNet-5's layout, wider convolutions: 16 and 32 channels, 128 hidden, 84 features).
    pub fn lenet(channels: usize, img_size: usize, num_classes: usize) -> Self {
        Self { channels, img_size, num_classes, conv1: 16, conv2: 32, hidden: 128, features: 84 }
    }

    /// Why this shape cannot be built, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.img_size < 12 || !self.img_size.is_multiple_of(4) {
            return Err(format!("the classifier needs an image size that is a multiple of 4, at least 12 (got {})", self.img_size));
        }
        if self.num_classes < 2 {
            return Err(format!("the classifier needs at least 2 classes (got {})", self.num_classes));
        }
        let widths = [self.channels, self.conv1, self.conv2, self.hidden, self.features];
        if widths.contains(&0) {
            return Err(format!("every width of the classifier must be positive: {self:?}"));
        }
        Ok(())
    }

    /// Side of the first pooled map (conv1 keeps the size).
    pub fn pooled1(&self) -> usize {
        self.img_size / 2
    }

    /// Side of conv2's output (no padding).
    pub fn conv2_size(&self) -> usize {
        self.pooled1() - (KERNEL - 1)
    }

    /// Side of the second pooled map.
    pub fn pooled2(&self) -> usize {
        self.conv2_size() / 2
    }

    /// Width of the flattened second pooled map (fc1's input).
    pub fn flat(&self) -> usize {
        self.conv2 * self.pooled2() * self.pooled2()
    }

    /// Every parameter's name and shape, in PyTorch's layout.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let k = KERNEL;
        let mut out = Vec::new();
        let mut push = |name: &str, w: Vec<usize>, b: usize| {
            out.push((format!("{name}.weight"), w));
            out.push((format!("{name}.bias"), vec![b]));
        };
        push("conv1", vec![self.conv1, self.channels, k, k], self.conv1);
        push("conv2", vec![self.conv2, self.conv1, k, k], self.conv2);
        push("fc1", vec![self.hidden, self.flat()], self.hidden);
        push("fc2", vec![self.features, self.hidden], self.features);
        push("head", vec![self.num_classes, self.features], self.num_classes);
        out
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.parameters().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet_shapes_for_fashion_mnist() {
        let c = ClassifierConfig::lenet(1, 28, 10);
        c.validate().unwrap();
        assert_eq!((c.pooled1(), c.conv2_size(), c.pooled2(), c.flat()), (14, 10, 5, 800));
        // 16*25+16 + 32*16*25+32 + 800*128+128 + 128*84+84 + 84*10+10
        assert_eq!(c.num_params(), 416 + 12_832 + 102_528 + 10_836 + 850);
        assert!(ClassifierConfig::lenet(1, 30, 10).validate().is_err());
        assert!(ClassifierConfig::lenet(1, 28, 1).validate().is_err());
    }
}

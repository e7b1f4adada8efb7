//! The quality classifier in Burn (shape and names: [`itarflow_base::classifier`]).

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use itarflow_base::classifier::KERNEL;
use itarflow_base::{ClassifierConfig, RawTensor};

use crate::nn::linear;

#[derive(Module, Debug)]
pub struct LeNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub head: Linear,
    pool: AvgPool2d,
}

impl LeNet {
    /// A freshly initialised classifier (the device's seed decides the weights).
    pub fn new(c: &ClassifierConfig, device: &Device) -> Self {
        let pad = (KERNEL - 1) / 2;
        Self {
            conv1: Conv2dConfig::new([c.channels, c.conv1], [KERNEL, KERNEL])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .init(device),
            conv2: Conv2dConfig::new([c.conv1, c.conv2], [KERNEL, KERNEL]).init(device),
            fc1: linear(c.flat(), c.hidden, device),
            fc2: linear(c.hidden, c.features, device),
            head: linear(c.features, c.num_classes, device),
            pool: AvgPool2dConfig::new([2, 2]).init(),
        }
    }

    /// Features (N, F) of images (N, C, H, W) in [-1, 1].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        relu(self.fc2.forward(relu(self.fc1.forward(x))))
    }

    /// Features and logits (N, K).
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let f = self.features(x);
        let logits = self.head.forward(f.clone());
        (f, logits)
    }

    /// Every parameter under its PyTorch name and layout.
    pub fn to_named(&self) -> BTreeMap<String, RawTensor> {
        fn raw<const D: usize>(t: Tensor<D>) -> RawTensor {
            RawTensor::new(t.dims().to_vec(), t.try_into_vec_as::<f32>().expect("classifier tensors are f32"))
        }
        let mut out = BTreeMap::new();
        for (name, conv) in [("conv1", &self.conv1), ("conv2", &self.conv2)] {
            out.insert(format!("{name}.weight"), raw(conv.weight.val()));
            out.insert(format!("{name}.bias"), raw(conv.bias.as_ref().expect("convolutions have biases").val()));
        }
        for (name, l) in [("fc1", &self.fc1), ("fc2", &self.fc2), ("head", &self.head)] {
            out.insert(format!("{name}.weight"), raw(l.weight.val().transpose()));
            out.insert(format!("{name}.bias"), raw(l.bias.as_ref().expect("linear layers have biases").val()));
        }
        out
    }

    /// A classifier holding `tensors` (PyTorch names and layouts, every shape checked).
    pub fn from_named(c: &ClassifierConfig, tensors: &BTreeMap<String, RawTensor>, device: &Device) -> Result<Self, String> {
        for (name, shape) in c.parameters() {
            let t = tensors.get(&name).ok_or_else(|| format!("tensor '{name}' is missing (expected {shape:?})"))?;
            if t.shape != shape {
                return Err(format!("tensor '{name}' has shape {:?}, expected {shape:?}", t.shape));
            }
        }
        let extra: Vec<&String> = tensors.keys().filter(|k| !c.parameters().iter().any(|(n, _)| n == *k)).collect();
        if !extra.is_empty() {
            return Err(format!("unexpected tensors {extra:?}"));
        }
        fn tensor<const D: usize>(t: &RawTensor, device: &Device) -> Tensor<D> {
            Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
        }
        let mut m = Self::new(c, device);
        let get = |n: &str| &tensors[n];
        m.conv1.weight = Param::from_tensor(tensor(get("conv1.weight"), device));
        m.conv1.bias = Some(Param::from_tensor(tensor(get("conv1.bias"), device)));
        m.conv2.weight = Param::from_tensor(tensor(get("conv2.weight"), device));
        m.conv2.bias = Some(Param::from_tensor(tensor(get("conv2.bias"), device)));
        for (name, l) in [("fc1", &mut m.fc1), ("fc2", &mut m.fc2), ("head", &mut m.head)] {
            l.weight = Param::from_tensor(tensor::<2>(get(&format!("{name}.weight")), device).transpose());
            l.bias = Some(Param::from_tensor(tensor(get(&format!("{name}.bias")), device)));
        }
        Ok(m)
    }
}

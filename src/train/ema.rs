//! Exponential moving average of the weights: ema = d ema + (1 - d) param after every step.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::ITarFlow;

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach().without_autodiff();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

struct Blend {
    current: std::vec::IntoIter<Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let cur = self.current.next().expect("the EMA and the model have the same parameters");
        let decay = self.decay;
        param.map(|e| {
            let dims = e.dims();
            e.mul_scalar(decay) + cur.reshape(dims).mul_scalar(1.0 - decay)
        })
    }
}

/// The plain-device weights of `model`, as a new model (the EMA's starting point).
pub fn snapshot(model: &ITarFlow) -> ITarFlow {
    model.valid()
}

/// Moves `ema` towards `model`.
pub fn update(ema: ITarFlow, model: &ITarFlow, decay: f64) -> ITarFlow {
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    let mut blend = Blend { current: collect.0.into_iter(), decay };
    ema.map(&mut blend)
}

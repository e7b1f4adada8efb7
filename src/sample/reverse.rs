//! Phase 1: invert every flow layer token by token, last layer first.
//!
//! Each step runs the layer's network on one token with the KV cache of the tokens before it
//! (one token's work, not a re-run of the prefix). Guided layers run the conditional and the
//! unconditional branch as one batch of 2B rows.

use burn::prelude::*;

use super::{Guidance, Progress};
use crate::model::{ITarFlow, Labels, patch::unpatchify};
use crate::nn::KvCache;

/// Inverts the model from prior noise `z` (B, T, c) of the last layer, conditioned on noise level
/// `t` and `labels`; returns images (B, C, H, W) at noise level t. `z` is scaled by sqrt(var)
/// first, as in the reference.
pub fn reverse(
    model: &ITarFlow,
    z: Tensor<3>,
    t: f64,
    labels: &Labels,
    guidance: &Guidance,
    progress: &mut dyn FnMut(Progress),
) -> Tensor<4> {
    let [b, _, _] = z.dims();
    let device = z.device();
    let num = model.layers.len();
    let t_batch = Tensor::<1>::full([b], t, &device);
    let conds = model.conds(t_batch.clone(), labels);
    let any_guided = (0..num).any(|i| guidance.guides(i));
    let unconds = any_guided.then(|| model.conds(t_batch, &Labels::unconditional(b)));
    let inv_temp = any_guided.then(|| {
        let mut v = vec![1.0f32; b];
        v.extend(std::iter::repeat_n((1.0 / guidance.uncond_temperature) as f32, b));
        Tensor::<1>::from_data(TensorData::new(v, [2 * b]), &device).reshape([2 * b, 1, 1, 1])
    });

    let mut x = z * model.var.clone().sqrt().unsqueeze::<3>();
    for (i, l) in (0..num).rev().enumerate() {
        if i > 0 {
            x = model.repatch(x, l + 1, l);
        }
        let layer = &model.layers[l];
        let guided = guidance.guides(i);
        let cond = match (&unconds, guided) {
            (Some(u), true) => Tensor::cat(vec![conds[l].clone(), u[l].clone()], 0),
            _ => conds[l].clone(),
        };
        let temp = if guided { inv_temp.as_ref() } else { None };
        let [_, tokens, _] = x.dims();
        let steps = tokens - 1;
        let mut seq: Vec<Tensor<2>> = layer.permute(x, 1).chunk(tokens, 1).into_iter().map(|tok| tok.squeeze_dim::<2>(1)).collect();
        let mut caches = vec![KvCache::default(); layer.depth(&model.shared_backbone)];
        for n in 0..steps {
            let input = if guided { Tensor::cat(vec![seq[n].clone(), seq[n].clone()], 0) } else { seq[n].clone() };
            let (a, shift) = layer.step(input, n, &cond, &model.shared_backbone, &mut caches, temp);
            let (scale, shift) = if guided {
                let (a_c, a_u) = (a.clone().narrow(0, 0, b), a.narrow(0, b, b));
                let (b_c, b_u) = (shift.clone().narrow(0, 0, b), shift.narrow(0, b, b));
                super::guidance::combine(guidance, guidance.weight(n, steps), (a_c.exp(), b_c), (a_u.exp(), b_u))
            } else {
                (a.exp(), shift)
            };
            seq[n + 1] = seq[n + 1].clone() * scale + shift;
            progress(Progress::Invert { layer: i, layers: num, step: n + 1, steps });
        }
        x = layer.permute(Tensor::stack(seq, 1), 1);
    }
    let c = &model.config;
    let mut img = unpatchify(x, c.patch_size(0), c.in_channels, c.img_size);
    if c.input_scale != 1.0 {
        img = img.div_scalar(c.input_scale);
    }
    img
}

//! Models of other shapes than the reference checkpoint (unconditional, 3 channels, other patch
//! sizes and widths, deep-shallow and shared-backbone stacks, shift-only flows, an input scale):
//! checked by the forward/inverse round trip, by finite differences of log p against the score,
//! by KV-cached steps against the full sequence, and through a save/load cycle.

mod common;

use burn::prelude::*;
use common::*;
use itarflow::checkpoint::{self, ImportOptions};
use itarflow::model::patchify;
use itarflow::nn::KvCache;
use itarflow::sample::{Guidance, reverse};
use itarflow::{Labels, ModelConfig};

fn config(img: usize, ch: usize, patches: Vec<usize>, widths: Vec<usize>, blocks: Vec<usize>, classes: usize) -> ModelConfig {
    let num_layers = blocks.len().max(patches.len()).max(widths.len());
    ModelConfig {
        img_size: img,
        in_channels: ch,
        patch_sizes: patches,
        num_layers,
        widths,
        blocks_per_layer: blocks,
        head_dim: 16,
        expansion: 4,
        num_classes: classes,
        shared_backbone_blocks: 0,
        affine: true,
        input_scale: 1.0,
        t_min: 0.01,
        t_max: 0.3,
    }
}

/// The shapes exercised, with a name for failure messages.
fn shapes() -> Vec<(&'static str, ModelConfig)> {
    let mut shared = config(8, 3, vec![2], vec![32], vec![3, 3, 4], 4);
    shared.shared_backbone_blocks = 2;
    let mut additive = config(8, 1, vec![2], vec![32], vec![1, 1], 0);
    additive.affine = false;
    let mut scaled = config(8, 1, vec![2], vec![32], vec![2, 1], 3);
    scaled.input_scale = 0.5;
    vec![
        ("unconditional rgb patch 4", config(16, 3, vec![4], vec![32], vec![2, 1], 0)),
        ("grey patch 1, 3 heads, deep-shallow", config(8, 1, vec![1], vec![48], vec![1, 1, 2], 5)),
        ("per-layer widths and patch sizes", config(8, 1, vec![4, 2, 2, 4], vec![32, 48, 32, 16], vec![1], 3)),
        ("shared backbone", shared),
        ("shift-only", additive),
        ("input scale", scaled),
    ]
}

fn labels_for(c: &ModelConfig, b: usize) -> Labels {
    if c.num_classes == 0 {
        Labels::None
    } else {
        Labels::Classes((0..b as i64).map(|i| if i == 1 { -1 } else { i % c.num_classes as i64 }).collect())
    }
}

fn images(c: &ModelConfig, b: usize, seed: u64) -> Tensor<4> {
    gaussian([b, c.in_channels, c.img_size, c.img_size], seed, 0.5)
}

#[test]
fn inverse_of_forward_is_identity() {
    for (i, (name, c)) in shapes().into_iter().enumerate() {
        let model = random_model(&c, 100 + i as u64);
        let b = 3;
        let x = images(&c, b, 7 + i as u64);
        let y = labels_for(&c, b);
        let t = 0.2;
        let fwd = model.forward(x.clone(), Tensor::full([b], t, &device()), &y);
        // reverse() scales the prior noise by sqrt(var) first; undo that here.
        let z = fwd.z / model.var.clone().sqrt().unsqueeze::<3>();
        let back = reverse(&model, z, t, &y, &Guidance::default(), &mut |_| {});
        let err = max_abs(back - x);
        println!("{name}: round-trip max abs error {err:.2e}");
        assert!(err < 1e-5, "{name}: inverse(forward(x)) differs from x by {err:.2e}");
    }
}

#[test]
fn score_matches_finite_differences_of_log_p() {
    for (i, (name, c)) in shapes().into_iter().enumerate() {
        let model = random_model(&c, 200 + i as u64);
        let b = 2;
        let x = images(&c, b, 30 + i as u64);
        let y = labels_for(&c, b);
        let t: Tensor<1> = Tensor::from_data(TensorData::new(vec![0.1f32, 0.25], [b]), &device());
        let (score, _) = model.score(x.clone(), t.clone(), &y);
        for k in 0..3 {
            let v = gaussian(x.dims(), 1000 + k, 1.0);
            let h = 1e-2;
            let lp = |xx: Tensor<4>| values(model.log_prob(xx, t.clone(), &y));
            let (plus, minus) = (lp(x.clone() + v.clone().mul_scalar(h)), lp(x.clone() - v.clone().mul_scalar(h)));
            let dd = values((score.clone() * v.clone()).sum_dims(&[1, 2, 3]).reshape([b]));
            let vn = values(v.clone().square().sum()).iter().map(|&s| s.sqrt()).sum::<f32>();
            let sn = values(score.clone().square().sum()).iter().map(|&s| s.sqrt()).sum::<f32>();
            for r in 0..b {
                let fd = (plus[r] - minus[r]) as f64 / (2.0 * h);
                let rel = (fd - dd[r] as f64).abs() / (sn * vn) as f64;
                assert!(rel < 1e-3, "{name}: directional derivative {fd} vs score {}: {rel:.2e}", dd[r]);
            }
        }
    }
}

#[test]
fn kv_cached_steps_equal_the_full_sequence() {
    for (i, (name, c)) in shapes().into_iter().enumerate() {
        let model = random_model(&c, 300 + i as u64);
        let b = 2;
        let y = labels_for(&c, b);
        let conds = model.conds(Tensor::full([b], 0.15, &device()), &y);
        for (l, layer) in model.layers.iter().enumerate() {
            let (t, tok) = model.token_shape(l);
            let u = gaussian([b, t, tok], 40 + l as u64, 1.0);
            let (a_full, b_full) = layer.network(u.clone(), &conds[l], &model.shared_backbone);
            let mut caches = vec![KvCache::default(); layer.depth(&model.shared_backbone)];
            let mut worst = 0.0f64;
            for n in 0..t {
                let token = u.clone().narrow(1, n, 1).reshape([b, tok]);
                let (a, s) = layer.step(token, n, &conds[l], &model.shared_backbone, &mut caches, None);
                let fa = a_full.clone().narrow(1, n, 1).reshape([b, tok]);
                let fb = b_full.clone().narrow(1, n, 1).reshape([b, tok]);
                let e = max_diff(&values(a), &values(fa)).max(max_diff(&values(s), &values(fb)));
                worst = worst.max(e);
            }
            assert!(worst < 1e-5, "{name}, layer {l}: step differs from full sequence by {worst:.2e}");
        }
    }
}

#[test]
fn save_and_load_keep_config_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, c)) in shapes().into_iter().enumerate() {
        let model = random_model(&c, 400 + i as u64);
        let path = dir.path().join(format!("m{i}.safetensors"));
        checkpoint::save(&model, &path).unwrap();
        let loaded = checkpoint::load(&path, &ImportOptions::default(), &device()).unwrap();
        assert!(loaded.config_from_file);
        assert_eq!(loaded.model.config, c, "{name}");
        let x = images(&c, 2, 5);
        let y = labels_for(&c, 2);
        let t = Tensor::full([2], 0.1, &device());
        let a = values(model.forward(x.clone(), t.clone(), &y).z);
        let b = values(loaded.model.forward(x, t, &y).z);
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn config_is_inferred_from_shapes_of_files_without_one() {
    // A checkpoint with the reference's names but no stored config (as a torch state_dict).
    for (name, c) in shapes() {
        let model = random_model(&c, 9);
        let named = itarflow::checkpoint::NamedTensors {
            tensors: itarflow::checkpoint::names::to_named(&model).into_iter().collect(),
            ..Default::default()
        };
        let opts = ImportOptions { head_dim: Some(16), in_channels: Some(c.in_channels), ..Default::default() };
        let mut inferred = checkpoint::infer_config(&named, &opts).unwrap();
        inferred.input_scale = c.input_scale;
        assert_eq!(inferred, c.normalized(), "{name}");
    }
}

#[test]
fn patchify_is_torch_unfold() {
    // unfold with kernel = stride = p puts token (i, j) = patch row i, column j, and inside a
    // token the (C, p, p) block with the channel slowest.
    let (b, ch, s, p) = (1, 2, 4, 2);
    let data: Vec<f32> = (0..b * ch * s * s).map(|v| v as f32).collect();
    let x: Tensor<4> = Tensor::from_data(TensorData::new(data, [b, ch, s, s]), &device());
    let tokens = values(patchify(x, p));
    // Token 1 = patch row 0, column 1: channel 0 rows 0-1 cols 2-3, then channel 1.
    assert_eq!(&tokens[8..16], &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
}

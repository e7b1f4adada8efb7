//! Checkpoint import errors: each names the key and the shapes, or the flag that resolves it.

mod common;

use common::*;
use itarflow::checkpoint::{self, ImportOptions, NamedTensors, RawTensor, names};

fn tiny_named() -> NamedTensors {
    NamedTensors::read(&fixture("tiny16_c1.pth")).unwrap()
}

fn build(named: &NamedTensors) -> String {
    let config = itarflow::ModelConfig::preset("tiny16").unwrap();
    names::from_named(named, &config, &device()).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn tiny_preset_is_the_reference_checkpoints_shape() {
    let config = itarflow::ModelConfig::preset("tiny16").unwrap();
    let inferred = checkpoint::infer_config(&tiny_named(), &ImportOptions::default()).unwrap();
    assert_eq!(inferred, config);
}

#[test]
fn missing_tensor_is_named() {
    let mut named = tiny_named();
    named.tensors.remove("blocks.2.head_blocks.1.mlp.main.0.weight");
    let e = build(&named);
    assert!(e.contains("blocks.2.head_blocks.1.mlp.main.0.weight") && e.contains("[256, 64]"), "{e}");
}

#[test]
fn misshapen_tensor_names_key_and_both_shapes() {
    let mut named = tiny_named();
    named.tensors.insert("blocks.1.pos_embed".into(), RawTensor { shape: vec![32, 64], data: vec![0.0; 32 * 64] });
    let e = build(&named);
    assert!(e.contains("blocks.1.pos_embed") && e.contains("[32, 64]") && e.contains("[64, 64]"), "{e}");
}

#[test]
fn extra_tensor_is_named() {
    let mut named = tiny_named();
    named.tensors.insert("blocks.0.extra.weight".into(), RawTensor { shape: vec![3], data: vec![0.0; 3] });
    let e = build(&named);
    assert!(e.contains("blocks.0.extra.weight") && e.contains("[3]"), "{e}");
}

#[test]
fn legacy_attn_blocks_names_load() {
    let mut named = tiny_named();
    named.tensors = named.tensors.into_iter().map(|(k, v)| (k.replace(".head_blocks.", ".attn_blocks."), v)).collect();
    let config = itarflow::ModelConfig::preset("tiny16").unwrap();
    let legacy = names::from_named(&named, &config, &device()).unwrap();
    let v = vectors();
    let z = legacy.forward(tensor(&v, "x"), tensor_as(&v, "t", [4]), &labels(&v, "y")).z;
    check(&v, "z", z, 1e-4);
}

#[test]
fn channel_count_that_shapes_cannot_tell_names_the_flag() {
    // Tokens of width 8 fit 2 channels in 2x2 patches or 8 in 1x1, but no grey or RGB image.
    let c = itarflow::ModelConfig { in_channels: 2, ..itarflow::ModelConfig::preset("tiny16").unwrap() };
    let model = random_model(&c, 1);
    let named = NamedTensors { tensors: names::to_named(&model).into_iter().collect(), ..Default::default() };
    let e = checkpoint::infer_config(&named, &ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("ambiguous") && e.contains("--in-channels") && e.contains("2 channel(s), patch 2"), "{e}");
    let ok = checkpoint::infer_config(&named, &ImportOptions { in_channels: Some(2), ..Default::default() }).unwrap();
    assert_eq!(ok, c);
    let ok = checkpoint::infer_config(&named, &ImportOptions { img_size: Some(16), ..Default::default() }).unwrap();
    assert_eq!(ok, c);
}

#[test]
fn flags_that_contradict_a_stored_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    checkpoint::save(&tiny(false), &path).unwrap();
    let e = checkpoint::load(&path, &ImportOptions { in_channels: Some(3), ..Default::default() }, &device()).unwrap_err().to_string();
    assert!(e.contains("--in-channels 3") && e.contains("stored config"), "{e}");
    // The saved file holds the reference's names, so the reference can load it too.
    let saved = NamedTensors::read(&path).unwrap();
    let reference = tiny_named();
    assert_eq!(saved.tensors.keys().collect::<Vec<_>>(), reference.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &reference.tensors {
        assert_eq!(&saved.tensors[k], t, "{k}");
    }
}

#[test]
fn fp16_checkpoints_round_weights_and_keep_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.safetensors");
    let model = tiny(false);
    checkpoint::save_as(&model, &path, checkpoint::Precision::Fp16).unwrap();
    let full = dir.path().join("full.safetensors");
    checkpoint::save(&model, &full).unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&path) < size(&full) / 2 + 8192, "{} vs {}", size(&path), size(&full));
    let half = checkpoint::load(&path, &ImportOptions::default(), &device()).unwrap();
    assert_eq!(half.model.config, model.config);
    for ((k, a), (_, b)) in names::to_named(&model).into_iter().zip(names::to_named(&half.model)) {
        let rounded: Vec<f32> = a.data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert_eq!(rounded, b.data, "{k}");
    }
    // The forward pass moves by about the f16 rounding of the weights (2^-11 relative).
    let v = vectors();
    let z = half.model.forward(tensor(&v, "x"), tensor_as(&v, "t", [4]), &labels(&v, "y")).z;
    let e = rel_err(&values(z), &array(&v, "z").1);
    println!("fp16 weights: z rel_err {e:.2e}");
    assert!(e < 5e-3, "{e}");
}

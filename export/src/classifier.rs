//! The quality classifier (see [`itarflow_base::classifier`]) as an ONNX graph:
//! `images` (N, C, H, W) in [-1, 1] -> `features` (N, F), `logits` (N, K).
//!
//! It runs in NHWC: each 5x5 convolution is its patches (Slices, concatenated on the channel axis
//! in (dy, dx, c) order) times one weight matrix, each 2x2 average pool a Reshape and a ReduceMean,
//! and fc1's rows are permuted so that the NHWC flatten reads what PyTorch's (C, H, W) flatten
//! reads. Only IR ops, so tract and ONNX Runtime both run it.

use std::collections::BTreeMap;
use std::path::Path;

use itarflow_base::classifier::KERNEL;
use itarflow_base::{ClassifierConfig, RawTensor};

use crate::ExportError;
use crate::ir::{DType, Dim, Graph, V};
use crate::onnx;
use crate::ops::Un;

/// Graph input and outputs.
pub const INPUT: &str = "images";
pub const FEATURES: &str = "features";
pub const LOGITS: &str = "logits";

fn get<'a>(tensors: &'a BTreeMap<String, RawTensor>, name: &str, shape: &[usize]) -> Result<&'a [f32], ExportError> {
    let t = tensors.get(name).ok_or_else(|| ExportError::Weights(format!("classifier tensor '{name}' is missing (expected {shape:?})")))?;
    if t.shape != shape {
        return Err(ExportError::Weights(format!("classifier tensor '{name}' has shape {:?}, expected {shape:?}", t.shape)));
    }
    Ok(&t.data)
}

/// A 5x5 convolution without padding of `x` (N, size, size, cin) by PyTorch weight
/// (cout, cin, 5, 5) and bias: (N, size - 4, size - 4, cout).
fn conv(g: &mut Graph, x: V, size: usize, (cin, cout): (usize, usize), w: &[f32], b: &[f32], name: &str) -> V {
    let k = KERNEL;
    let out = size - (k - 1);
    let mut patches = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            let rows = g.slice(x, 1, dy, dy + out);
            patches.push(g.slice(rows, 2, dx, dx + out));
        }
    }
    let cols = g.concat(&patches, 3);
    let mut wm = vec![0f32; k * k * cin * cout];
    for o in 0..cout {
        for c in 0..cin {
            for dy in 0..k {
                for dx in 0..k {
                    wm[((dy * k + dx) * cin + c) * cout + o] = w[((o * cin + c) * k + dy) * k + dx];
                }
            }
        }
    }
    let wv = g.weight(&format!("{name}.weight"), &[k * k * cin, cout], wm);
    let bv = g.weight(&format!("{name}.bias"), &[cout], b.to_vec());
    let y = g.matmul(cols, wv);
    g.plus(y, bv)
}

/// 2x2 average pooling of `x` (N, size, size, ch).
fn pool(g: &mut Graph, x: V, size: usize, ch: usize) -> V {
    let h = (size / 2) as i64;
    let blocks = g.reshape(x, &[-1, h, 2, h, 2, ch as i64]);
    let mean = g.mean(blocks, &[2, 4]);
    g.reshape(mean, &[-1, h, h, ch as i64])
}

/// A Linear layer with PyTorch weight (out, in), its input rows taken in `order` (row r of the
/// graph's matrix is the weight's input column order[r]).
fn linear(g: &mut Graph, x: V, w: &[f32], b: &[f32], (d_in, d_out): (usize, usize), order: Option<&[usize]>, name: &str) -> V {
    let mut wt = vec![0f32; d_in * d_out];
    for r in 0..d_in {
        let i = order.map_or(r, |o| o[r]);
        for o in 0..d_out {
            wt[r * d_out + o] = w[o * d_in + i];
        }
    }
    let wv = g.weight(&format!("{name}.weight"), &[d_in, d_out], wt);
    let bv = g.weight(&format!("{name}.bias"), &[d_out], b.to_vec());
    let y = g.matmul(x, wv);
    g.plus(y, bv)
}

/// The classifier's graph from its weights under PyTorch names (see
/// [`ClassifierConfig::parameters`]).
pub fn classifier_graph(c: &ClassifierConfig, tensors: &BTreeMap<String, RawTensor>) -> Result<Graph, ExportError> {
    c.validate().map_err(ExportError::Invalid)?;
    let shapes: BTreeMap<String, Vec<usize>> = c.parameters().into_iter().collect();
    let p = |name: &str| get(tensors, name, &shapes[name]);
    let mut g = Graph::new("classifier");
    let images = g.input(INPUT, DType::F32, vec![Dim::sym("N"), Dim::N(c.channels), Dim::N(c.img_size), Dim::N(c.img_size)]);
    let x = g.transpose(images, vec![0, 2, 3, 1]);
    let pad = (KERNEL - 1) / 2;
    let x = g.pad(x, 1, pad, pad);
    let x = g.pad(x, 2, pad, pad);
    let x = conv(&mut g, x, c.img_size + 2 * pad, (c.channels, c.conv1), p("conv1.weight")?, p("conv1.bias")?, "conv1");
    let x = g.unary(Un::Relu, x);
    let x = pool(&mut g, x, c.img_size, c.conv1);
    let x = conv(&mut g, x, c.pooled1(), (c.conv1, c.conv2), p("conv2.weight")?, p("conv2.bias")?, "conv2");
    let x = g.unary(Un::Relu, x);
    let x = pool(&mut g, x, c.conv2_size(), c.conv2);
    let x = g.reshape(x, &[-1, c.flat() as i64]);
    // NHWC flatten position (h * P + w) * C2 + ch reads PyTorch's ch * P * P + h * P + w.
    let side = c.pooled2();
    let order: Vec<usize> = (0..c.flat())
        .map(|r| {
            let (hw, ch) = (r / c.conv2, r % c.conv2);
            ch * side * side + hw
        })
        .collect();
    let x = linear(&mut g, x, p("fc1.weight")?, p("fc1.bias")?, (c.flat(), c.hidden), Some(&order), "fc1");
    let x = g.unary(Un::Relu, x);
    let x = linear(&mut g, x, p("fc2.weight")?, p("fc2.bias")?, (c.hidden, c.features), None, "fc2");
    let features = g.unary(Un::Relu, x);
    let logits = linear(&mut g, features, p("head.weight")?, p("head.bias")?, (c.features, c.num_classes), None, "head");
    g.output(features, FEATURES);
    g.output(logits, LOGITS);
    g.check().map_err(ExportError::Check)?;
    Ok(g)
}

/// Writes the classifier's graph to `path` (weights inside the file; atomically).
pub fn write_classifier(c: &ClassifierConfig, tensors: &BTreeMap<String, RawTensor>, path: &Path) -> Result<(), ExportError> {
    let g = classifier_graph(c, tensors)?;
    onnx::save(&g, path, onnx::DEFAULT_OPSET, None)
}

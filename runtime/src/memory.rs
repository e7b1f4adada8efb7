//! Memory: the activation bytes one image costs in a score evaluation (to size phase 2's batches
//! to a budget) and the process's peak resident memory (for `bench`).

use itarflow_base::manifest::Manifest;

use crate::sampler::ScoreForm;

/// Activation bytes of one image through one layer's forward and backward, 4 bytes per value:
/// per block, about 6 widths and 3 MLP hidden widths per token, and 2 H T^2 for the attention's
/// scores and probabilities. Calibrated on the S-sized benchmark model (benches/configs/s64.json:
/// 256 tokens, width 512, 20 blocks), where the whole-model score graph's resident memory grew by
/// 249 MiB per image on ONNX Runtime CPU and 230 MiB on tract; this formula gives 260 MiB.
fn layer_bytes(m: &Manifest, l: usize) -> usize {
    let info = &m.layers[l];
    let (t, w, h) = (info.tokens, info.width, info.heads);
    let hidden = w * m.model.expansion;
    let per_block = t * (6 * w + 3 * hidden) + 2 * h * t * t;
    4 * per_block * info.blocks
}

/// Estimated bytes one image needs in a score evaluation: every layer at once for the
/// whole-model graph, the largest layer for the layer-wise form.
pub fn score_bytes_per_image(m: &Manifest, form: ScoreForm) -> usize {
    let layers = (0..m.layers.len()).map(|l| layer_bytes(m, l));
    match form {
        ScoreForm::Whole => layers.sum(),
        ScoreForm::Layerwise => layers.max().unwrap_or(0),
    }
}

/// Images per score evaluation that fit `budget` bytes (at least 1).
pub fn batch_for_budget(m: &Manifest, form: ScoreForm, budget: usize) -> usize {
    (budget / score_bytes_per_image(m, form).max(1)).max(1)
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

//! Layouts and partitions: images (B, C, H, W) to and from tokens (B, T, c) of a patch size, and
//! the splitting of a batch into runs.

use itarflow_base::ModelConfig;

/// Moves values between tokens (B, T, c) of patch p and images (B, C, S, S):
/// `to_image` selects the direction.
fn repack(x: &[f32], b: usize, c: &ModelConfig, p: usize, to_image: bool) -> Vec<f32> {
    let (s, ch, g) = (c.img_size, c.in_channels, c.img_size / p);
    let mut out = vec![0.0; x.len()];
    let tok = ch * p * p;
    for n in 0..b {
        for gi in 0..g {
            for gj in 0..g {
                for k in 0..ch {
                    for pi in 0..p {
                        for pj in 0..p {
                            let token = ((n * g * g + gi * g + gj) * tok) + (k * p + pi) * p + pj;
                            let pixel = ((n * ch + k) * s + gi * p + pi) * s + gj * p + pj;
                            if to_image {
                                out[pixel] = x[token];
                            } else {
                                out[token] = x[pixel];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Tokens (B, T, c) of patch `p` as images (B, C, H, W).
pub(crate) fn unpatchify(x: &[f32], b: usize, c: &ModelConfig, p: usize) -> Vec<f32> {
    repack(x, b, c, p, true)
}

/// Images (B, C, H, W) as tokens (B, T, c) of patch `p`.
pub(crate) fn patchify(img: &[f32], b: usize, c: &ModelConfig, p: usize) -> Vec<f32> {
    repack(img, b, c, p, false)
}

/// Tokens of patch `from` as tokens of patch `to` (the same pixels; a permutation whose
/// inverse is the swap of `from` and `to`).
pub(crate) fn repatch(x: &[f32], b: usize, c: &ModelConfig, from: usize, to: usize) -> Vec<f32> {
    if from == to { x.to_vec() } else { patchify(&unpatchify(x, b, c, from), b, c, to) }
}

/// `n` items as consecutive (start, len) chunks of at most `batch` (0 = one chunk of all).
pub(crate) fn chunks(n: usize, batch: usize) -> Vec<(usize, usize)> {
    let size = if batch == 0 { n.max(1) } else { batch };
    (0..n).step_by(size).map(|start| (start, size.min(n - start))).collect()
}

/// `n` items in at most `parts` consecutive (start, len) ranges of near-equal size.
pub(crate) fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|k| (k * n / parts, (k + 1) * n / parts - k * n / parts)).filter(|&(_, len)| len > 0).collect()
}

//! Images (B, C, H, W) to token sequences (B, T, C*p*p) and back, exactly as torch's
//! `unfold(kernel=p, stride=p)` followed by a transpose: tokens in raster order of patches, each
//! token the (C, p, p) block flattened with the channel slowest.

use burn::prelude::*;

/// (B, C, H, W) -> (B, (H/p)(W/p), C p p).
pub fn patchify(x: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p])
}

/// (B, T, C p p) -> (B, C, H, W), the inverse of [`patchify`] for an image of side `img_size`.
pub fn unpatchify(x: Tensor<3>, p: usize, channels: usize, img_size: usize) -> Tensor<4> {
    let [b, _, _] = x.dims();
    let g = img_size / p;
    x.reshape([b, g, g, channels, p, p]).permute([0, 3, 1, 4, 2, 5]).reshape([b, channels, img_size, img_size])
}

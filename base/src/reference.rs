//! The arrays of a package's `reference.npz`: inputs of every graph kind and the outputs the
//! exporting framework (Burn) computed for them, so that any runtime and provider can be checked
//! against the model itself (`itarflow-rt check`) without it.
//!
//! - `t` (B,), `y` (B,) when the model is conditional: the conditioning of every graph;
//! - `layer{l}.x` (B, T, c) in data order, `layer{l}.z`, `layer{l}.logdet` (B,): forward;
//! - `layer{l}.cond` (B, C): the layer's conditioning vector;
//! - `layer{l}.u` (B, T, c) in the layer's permuted order, `layer{l}.a` and `layer{l}.b`
//!   (T, B, c): the affine parameters step n returns (for token n + 1), inverse temperature 1;
//! - `score.x` (B, C, H, W), `score.score` (B, C, H, W), `score.logp` (B,).

/// `layer{l}.{what}`.
pub fn layer(l: usize, what: &str) -> String {
    format!("layer{l}.{what}")
}

pub const T: &str = "t";
pub const Y: &str = "y";
pub const SCORE_X: &str = "score.x";
pub const SCORE: &str = "score.score";
pub const LOGP: &str = "score.logp";

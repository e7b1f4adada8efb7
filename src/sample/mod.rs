//! The reference two-phase sampler in Burn: autoregressive inversion of every flow layer with a
//! KV cache and classifier-free guidance (phase 1), then iterative denoising with the model's own
//! score (phase 2).

pub mod denoise;
pub mod guidance;
pub mod pipeline;
pub mod reverse;

pub use denoise::{denoise, noise_levels, tweedie};
pub use guidance::{CfgStyle, Guidance};
pub use pipeline::{SampleOptions, class_grid, options_for, sample, seeded_noise, total_steps};
pub use reverse::reverse;

/// Where a long sampling run is, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Phase 1: `layer` is the position in sampling order (0 = last flow layer), `step` of `steps`.
    Invert { layer: usize, layers: usize, step: usize, steps: usize },
    /// Phase 2: denoising step `step` of `steps`.
    Denoise { step: usize, steps: usize },
}

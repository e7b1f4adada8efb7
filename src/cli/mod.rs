//! The subcommands of the `itarflow` binary and what they share.

pub mod ckpt;
pub mod denoise;
pub mod eval;
pub mod info;
pub mod inputs;
pub mod progress;
pub mod sample;

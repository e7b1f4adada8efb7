//! The subcommands of the `itarflow` binary and what they share.

pub mod bench_train;
pub mod ckpt;
pub mod convert;
pub mod data_args;
pub mod denoise;
pub mod eval;
pub mod eval_nll;
pub mod eval_quality;
pub mod export;
pub mod info;
pub mod init;
pub mod inputs;
pub mod progress;
pub mod sample;
pub mod train;
pub mod train_classifier;

//! The subcommands of `itarflow-rt`, one file each, and their shared flags.

pub mod ablate;
pub mod args;
pub mod bench;
pub mod check;
pub mod info;
pub mod io;
pub mod plot;
pub mod quality;
pub mod sample;
pub mod serve;

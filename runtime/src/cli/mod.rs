//! The subcommands of `itarflow-rt`, one file each, and their shared flags.

pub mod args;
pub mod bench;
pub mod check;
pub mod io;
pub mod sample;
pub mod serve;

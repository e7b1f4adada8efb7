//! ONNX Runtime's CPU execution provider: its arena, and the session options that suit the
//! sampler's many sessions on a CPU.

use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::SessionBuilder;

use super::fail;
use crate::RtError;

/// The CPU provider with its arena on (`ort` turns it off by default): without it every
/// intermediate tensor is a fresh allocation whose pages fault in on first touch: the demo's
/// score graph took 74 ms at batch 16 instead of 58 ms. Its memory pattern is off
/// ([`configure`]).
pub(super) fn execution_provider() -> ExecutionProviderDispatch {
    ort::ep::CPU::default().with_arena_allocator(true).build()
}

/// The CPU sessions' own options.
pub(super) fn configure(builder: SessionBuilder) -> Result<SessionBuilder, RtError> {
    // The memory pattern allocates a whole run's activations as one block planned from the
    // previous run of the shape; in the arena that block fits none of the first run's freed
    // chunks, so the arena grows by it: the s64 score graph at batch 4 then held 2.5 GiB
    // instead of 1.6 GiB, at the same speed.
    let builder = builder.with_memory_pattern(false).map_err(|e| fail("cpu", e))?;
    // Subnormals (the score's backward makes them: exp(-s^2) in the GELU derivative) flushed
    // to zero in the session's threads: each product with one costs a microcode assist.
    // Demo score on one thread 63.5 -> 60.6 ms, sampling 22.5 -> 23.9 images/s (the caller's
    // share of a run is flushed in `run_values`: without it 70.6 against 64.4 ms).
    builder.with_config_entry("session.set_denormal_as_zero", "1").map_err(|e| fail("cpu", e))
}

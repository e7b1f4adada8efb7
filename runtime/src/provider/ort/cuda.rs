//! ONNX Runtime's CUDA execution provider: IEEE fp32 unless TF32 is asked for, its own CUDA
//! graphs (one per run) or a stream of the caller's (whole loops recorded as one graph,
//! [`crate::provider::cuda_loop`]), and arenas that grow by what is asked.

use ort::ep::ExecutionProviderDispatch;

use crate::provider::cuda_loop::LoopStream;

/// CUDA with TensorFloat-32 matrix products if `tf32` (10-bit mantissa inputs: faster, not IEEE
/// fp32), ONNX Runtime's per-run CUDA graphs if `cuda_graph`, its kernels on `stream` if given.
/// Arenas grow by what is asked, not by doubling: the sampler holds some twenty sessions, and
/// doubling arenas held 5.8 GiB of GPU memory for the demo model at batch 16.
pub(super) fn execution_provider(tf32: bool, cuda_graph: bool, stream: Option<&LoopStream>) -> ExecutionProviderDispatch {
    let cuda = ort::ep::CUDA::default()
        .with_tf32(tf32)
        .with_cuda_graph(cuda_graph)
        .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
    match stream {
        // SAFETY: the stream outlives the session (`SessionState` drops the session first).
        Some(s) => unsafe { cuda.with_compute_stream(s.raw()) }.build(),
        None => cuda.build(),
    }
}

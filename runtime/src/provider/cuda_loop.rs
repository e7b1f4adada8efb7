//! Whole loops as one CUDA graph (`--cuda-graphs loop`, ONNX Runtime's CUDA provider).
//!
//! ONNX Runtime's own CUDA graphs (`enable_cuda_graph`, `--cuda-graphs step`) capture one run
//! each, and ONNX Runtime waits for the stream after every replay: a loop of T steps (a flow
//! layer's tokens) pays T host round trips, each the run's host work, a graph launch and a wait,
//! between GPU work of a few hundred microseconds. Here a session's runs go to a CUDA stream of its
//! own (ONNX Runtime's `user_compute_stream`), the T runs of a loop are recorded once by stream
//! capture (CUDA's driver API, through cudarc, loaded at run time: no CUDA at build time), and
//! later calls of the loop launch that one graph and wait once.
//!
//! A recorded graph holds the addresses of the loop's buffers (kept per loop shape by the
//! caller) and of the intermediate values ONNX Runtime placed in the session's arena while it was
//! recorded; the arena keeps its memory for the session's life (it is never shrunk on a GPU), and
//! the runs that reuse those blocks in between are on the same stream, ordered before or after.

#[cfg(feature = "cuda-loops")]
mod imp {
    use std::sync::{Arc, OnceLock};

    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use cudarc::driver::{CudaContext, CudaGraph, CudaStream};

    static CONTEXT: OnceLock<Result<Arc<CudaContext>, String>> = OnceLock::new();

    /// Device 0's primary context: the one ONNX Runtime's CUDA provider (CUDA's runtime API)
    /// works in, so its streams and ours are of one context.
    fn context() -> Result<Arc<CudaContext>, String> {
        CONTEXT
            .get_or_init(|| {
                // SAFETY: cudarc documents `is_culib_present` as a dlopen probe with no other effect.
                if !unsafe { cudarc::driver::sys::is_culib_present() } {
                    return Err("the CUDA driver library (libcuda.so) was not found".into());
                }
                CudaContext::new(0).map_err(|e| format!("CUDA device 0: {e}"))
            })
            .clone()
    }

    /// A session's own CUDA stream, on which its loops are recorded and replayed.
    pub struct LoopStream {
        stream: Arc<CudaStream>,
    }

    /// A loop's runs, recorded: one launch replays them all.
    pub struct LoopGraph {
        graph: CudaGraph,
    }

    // SAFETY: CUDA asks that a graph object be used by one thread at a time; a `LoopGraph` lives in
    // a session's state, which only the holder of the session's mutex touches.
    unsafe impl Send for LoopGraph {}

    impl LoopStream {
        pub fn new() -> Result<Self, String> {
            let stream = context()?.new_stream().map_err(|e| format!("creating a CUDA stream: {e}"))?;
            Ok(Self { stream })
        }

        /// The raw `CUstream` (a `cudaStream_t`), for ONNX Runtime's `user_compute_stream`.
        pub fn raw(&self) -> *mut () {
            self.stream.cu_stream().cast()
        }

        /// Waits until the stream's work is done.
        pub fn synchronize(&self) -> Result<(), String> {
            self.stream.synchronize().map_err(|e| format!("waiting for the CUDA stream: {e}"))
        }

        /// Records what `body` submits to the stream (nothing runs) as a graph. Relaxed capture:
        /// an allocation ONNX Runtime makes meanwhile is allowed (and not recorded); anything that
        /// waits for the stream ends the capture with an error, returned here.
        pub fn record(&self, body: &mut dyn FnMut() -> Result<(), String>) -> Result<LoopGraph, String> {
            self.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(|e| format!("starting the stream capture: {e}"))?;
            let ran = body();
            // Ended whatever happened, so that the stream leaves capture mode.
            let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
            ran.map_err(|e| format!("a run under stream capture: {e}"))?;
            let graph = graph.map_err(|e| format!("ending the stream capture: {e}"))?.ok_or("the capture recorded no work")?;
            graph.upload().map_err(|e| format!("uploading the recorded graph: {e}"))?;
            Ok(LoopGraph { graph })
        }
    }

    impl LoopGraph {
        /// Enqueues the recorded runs on their stream (the caller synchronises).
        pub fn launch(&self) -> Result<(), String> {
            self.graph.launch().map_err(|e| format!("launching the recorded loop: {e}"))
        }
    }
}

#[cfg(not(feature = "cuda-loops"))]
mod imp {
    /// Without the `cuda-loops` feature there are no loop streams (the type has no values).
    pub enum LoopStream {}

    /// Without the `cuda-loops` feature there are no recorded loops.
    pub enum LoopGraph {}

    impl LoopStream {
        pub fn new() -> Result<Self, String> {
            Err("this itarflow-rt was built without the `cuda-loops` feature".into())
        }

        pub fn raw(&self) -> *mut () {
            match *self {}
        }

        pub fn synchronize(&self) -> Result<(), String> {
            match *self {}
        }

        pub fn record(&self, _body: &mut dyn FnMut() -> Result<(), String>) -> Result<LoopGraph, String> {
            match *self {}
        }
    }

    impl LoopGraph {
        pub fn launch(&self) -> Result<(), String> {
            match *self {}
        }
    }
}

pub use imp::{LoopGraph, LoopStream};

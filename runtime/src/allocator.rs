//! The C allocator's handling of freed memory, tuned for inference loops.
//!
//! Every run of a tract plan allocates its node outputs afresh and frees them when the run ends;
//! on the demo's score graph that is a few hundred buffers of 50-800 KiB. glibc's malloc serves
//! blocks that large with `mmap` (or trims them off the top of the heap once freed), so the next
//! run touches new pages: ~3,000 page faults per 8-image score run on this machine, 10-15% of
//! tract's time (score of 16 images over both cores 48.5 -> 40.9 ms; one phase-1 step 0.84 ->
//! 0.72 ms; ONNX Runtime, which keeps its own arena, unchanged). [`retain_freed_memory`] raises
//! both thresholds so freed blocks stay in the heap for the next run: the process's peak memory
//! is what it was (it is reached anyway), memory freed after the peak is kept for reuse.

/// Largest block served from the heap rather than `mmap` (glibc's ceiling for this setting).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap kept rather than returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Keeps freed memory in the process for reuse (see the module notes). Process-wide: the
/// `itarflow-rt` binary calls it first thing; an application embedding the runtime may call it
/// too, or leave its allocator alone. Returns whether the allocator took the settings (glibc on
/// Linux; elsewhere it does nothing and returns false).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc malloc's parameters; it is safe to call at any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

//! Subnormal floats flushed to zero while an engine computes on the calling thread.
//!
//! The score's backward pass makes subnormals: exp(-s^2) in the GELU derivative underflows
//! through them for large activations, and every product with one takes a microcode assist (~100
//! cycles) on x86-64. ONNX Runtime flushes them in its pool threads with the session option
//! `session.set_denormal_as_zero` (and sets the mode, for good, on the thread that creates the
//! first session: [`KeepMode`] around session creation undoes that); tract, and ONNX Runtime's
//! share of a run, compute on the caller's thread, so [`FlushToZero`] sets the SSE control bits
//! FTZ and DAZ for the duration of a run and puts the caller's bits back after it: the
//! application that embeds the runtime keeps its own floating-point mode. Only values below
//! 1.2e-38 change (to zero), far under the outputs' float precision.

/// While alive, the calling thread flushes subnormal inputs and results to zero (x86-64; a no-op
/// elsewhere).
pub struct FlushToZero {
    _restore: KeepMode,
}

/// MXCSR bits: FTZ (results) and DAZ (inputs).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: STMXCSR stores the SSE control/status register into the 4 bytes at the pointer.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

#[cfg(target_arch = "x86_64")]
fn set_mxcsr(v: u32) {
    // SAFETY: LDMXCSR loads the register from the 4 bytes at the pointer; only the FTZ/DAZ mode
    // bits differ from a value this thread held before.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, readonly)) };
}

/// While alive, nothing; when dropped, the calling thread's floating-point mode is what it was
/// when this was made (x86-64; a no-op elsewhere).
pub struct KeepMode {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl KeepMode {
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self { saved: mxcsr() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self {}
    }
}

impl Default for KeepMode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepMode {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        set_mxcsr(self.saved);
    }
}

impl FlushToZero {
    pub fn new() -> Self {
        let restore = KeepMode::new();
        #[cfg(target_arch = "x86_64")]
        set_mxcsr(mxcsr() | FTZ_DAZ);
        Self { _restore: restore }
    }
}

impl Default for FlushToZero {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A subnormal product is zero inside the guard and subnormal again after it.
    #[test]
    fn subnormals_flush_inside_the_guard_only() {
        let tiny = std::hint::black_box(1e-30f32);
        let product = |a: f32, b: f32| std::hint::black_box(a) * std::hint::black_box(b);
        assert!(product(tiny, 1e-10).is_subnormal());
        {
            let _guard = FlushToZero::new();
            assert_eq!(product(tiny, 1e-10), 0.0);
            assert_eq!(mxcsr() & FTZ_DAZ, FTZ_DAZ);
        }
        assert!(product(tiny, 1e-10).is_subnormal());
    }

    /// Whatever happens to the mode while a `KeepMode` lives is undone when it drops.
    #[test]
    fn keep_mode_restores_the_mode() {
        let before = mxcsr();
        {
            let _keep = KeepMode::new();
            set_mxcsr(before | FTZ_DAZ);
        }
        assert_eq!(mxcsr(), before);
    }
}

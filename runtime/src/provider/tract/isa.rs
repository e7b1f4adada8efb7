//! The instruction sets this module's kernels may use: what the CPU has, as tract's kernels see
//! it. tract probes the CPU once and lets `TRACT_CPU_ISA` edit the result (`-avx512f` runs the
//! process as an AVX2 machine would: tract's own matrix kernels and these alike), so one setting
//! reproduces, on any machine, the plans and kernels of a less capable CPU: what the tests and
//! benches of the AVX2 and baseline x86-64 paths use. A feature the setting adds but the CPU
//! lacks is not used (these kernels also ask the CPU itself).

use tract_linalg::isa::{Arch, Isa, IsaSet, native};

/// `TRACT_CPU_ISA`, if set, names features of this CPU's architecture that tract knows (a
/// `+` or `-` before each, comma-separated): tract itself would stop the process at its first
/// kernel on a foreign one, and ignore an unknown one.
pub fn check_setting() -> Result<(), String> {
    let Some(spec) = std::env::var_os("TRACT_CPU_ISA") else { return Ok(()) };
    let spec = spec.to_string_lossy();
    // Not `native()`: tract's own reading of the setting stops the process on a foreign feature.
    let here = Arch::ALL.into_iter().find(|a| a.is_native());
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let name = token.trim_start_matches(['+', '-']);
        let fix = "set it to features of this CPU with + or - before each (-avx512f makes an x86-64 CPU with AVX-512 \
                   run as an AVX2 one), or unset it";
        let set: IsaSet = name.parse().map_err(|e| format!("TRACT_CPU_ISA={spec}: {e}; {fix}"))?;
        if set.arch() != here {
            return Err(format!(
                "TRACT_CPU_ISA={spec}: {name} is a feature of {}, and this CPU is {}; {fix}",
                set.arch().map_or("no architecture".into(), |a| a.to_string()),
                here.map_or("of no architecture tract has kernels for".into(), |a| a.to_string())
            ));
        }
    }
    Ok(())
}

/// Whether the AVX-512F kernels run here (the larger matrix tile of [`super::gemm`]).
pub fn avx512f() -> bool {
    has(Isa::X86_64Avx512f)
}

/// Whether the AVX2 and FMA kernels run here (the smaller matrix tile of [`super::gemm`]).
pub fn avx2_fma() -> bool {
    avx2() && has(Isa::X86_64Fma)
}

/// Whether the AVX2 builds of the loops run here (the attention of [`super::attention`]).
pub fn avx2() -> bool {
    has(Isa::X86_64Avx2)
}

/// The CPU kernels tract runs here, for reports: this module's matrix tile, the instruction
/// sets tract sees (after `TRACT_CPU_ISA`) and the load-time rewrites that run (after
/// `ITARFLOW_TRACT_REWRITES`), e.g. "matrix tile avx2-fma; instruction sets
/// x86_64,avx,avx2,fma,f16c; rewrites all".
pub fn describe() -> String {
    let sets: Vec<&str> = native().iter().map(|i| i.name()).collect();
    format!("matrix tile {}; instruction sets {}; rewrites {}", super::gemm::kernel().name(), sets.join(","), super::rewrites::describe())
}

/// Whether the CPU has `isa` and tract's view of it (after `TRACT_CPU_ISA`) does too.
#[cfg(target_arch = "x86_64")]
fn has(isa: Isa) -> bool {
    let cpu = match isa {
        Isa::X86_64Avx512f => std::is_x86_feature_detected!("avx512f"),
        Isa::X86_64Avx2 => std::is_x86_feature_detected!("avx2"),
        Isa::X86_64Fma => std::is_x86_feature_detected!("fma"),
        _ => false,
    };
    cpu && native().has(isa)
}

#[cfg(not(target_arch = "x86_64"))]
fn has(_: Isa) -> bool {
    false
}

//! The load-time rewrites of tract's CPU plans: which run (all, unless
//! `ITARFLOW_TRACT_REWRITES` says otherwise) and how many nodes each replaced.
//!
//! `ITARFLOW_TRACT_REWRITES` takes `none`, a comma-separated list of rewrites (only those run),
//! or the same names each with `-` before (all but those run): to measure what one rewrite buys
//! (`itarflow-rt bench` with and without it), or to rule one out when an output looks wrong
//! (`itarflow-rt check` compares every graph with Burn's reference outputs either way).

use tract_onnx::prelude::*;

use super::{
    fuse_batched_matmuls, fuse_const_linears, fuse_gelu_grads, fuse_kv_attention, fuse_layer_norm_grads, fuse_layer_norms, gemm,
    rewrite_softmaxes, speed_up_broadcasts, speed_up_scatters,
};

/// The setting that selects the rewrites.
const SETTING: &str = "ITARFLOW_TRACT_REWRITES";

/// When a rewrite runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// On the model as typed from ONNX.
    Typed,
    /// On the decluttered model.
    Decluttered,
    /// On the decluttered model, where a register tile of [`super::matrix_kernel`] runs.
    Tiles,
}

/// A rewrite's pass: how many nodes it replaced.
type Pass = fn(&mut TypedModel) -> TractResult<usize>;

/// The rewrites in the order they run, by the name the setting and [`Rewrites`] give them.
const PASSES: [(&str, Stage, Pass); 9] = [
    ("attentions", Stage::Typed, fuse_kv_attention),
    ("softmaxes", Stage::Decluttered, rewrite_softmaxes),
    ("scatters", Stage::Decluttered, speed_up_scatters),
    ("gelu_grads", Stage::Decluttered, fuse_gelu_grads),
    ("layer_norm_grads", Stage::Decluttered, fuse_layer_norm_grads),
    ("layer_norms", Stage::Decluttered, fuse_layer_norms),
    ("linears", Stage::Tiles, fuse_const_linears),
    ("matmuls", Stage::Tiles, fuse_batched_matmuls),
    ("broadcasts", Stage::Decluttered, speed_up_broadcasts),
];

/// The rewrites' names, in the order they run.
fn names() -> impl Iterator<Item = &'static str> {
    PASSES.iter().map(|p| p.0)
}

/// How many nodes [`rewrite_for_cpu`] replaced, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrites {
    pub attentions: usize,
    pub softmaxes: usize,
    pub linears: usize,
    pub matmuls: usize,
    pub scatters: usize,
    pub gelu_grads: usize,
    pub layer_norms: usize,
    pub layer_norm_grads: usize,
    pub broadcasts: usize,
}

/// Which of the rewrites run, as `spec` (the setting's value, if set) selects them.
fn parse(spec: Option<&str>) -> Result<[bool; PASSES.len()], String> {
    let Some(spec) = spec.map(str::trim) else { return Ok([true; PASSES.len()]) };
    if spec == "none" {
        return Ok([false; PASSES.len()]);
    }
    let tokens: Vec<&str> = spec.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let without = tokens.iter().filter(|t| t.starts_with('-')).count();
    let fix =
        format!("use none, names from {}, or the same names each with - before (all but those)", names().collect::<Vec<_>>().join(", "));
    if without != 0 && without != tokens.len() {
        return Err(format!("{SETTING}={spec}: a list of rewrites to run, or of rewrites to leave out (each with -), not both; {fix}"));
    }
    let mut on = [without != 0; PASSES.len()];
    for t in tokens {
        let name = t.trim_start_matches('-');
        let i = names().position(|n| n == name).ok_or_else(|| format!("{SETTING}={spec}: no rewrite is called {name}; {fix}"))?;
        on[i] = without == 0;
    }
    Ok(on)
}

/// Which of the rewrites run, by the setting.
fn selected() -> Result<[bool; PASSES.len()], String> {
    let spec = std::env::var_os(SETTING).map(|s| s.to_string_lossy().into_owned());
    parse(spec.as_deref())
}

/// The rewrites that run, for reports: "all", "none", or those that run by name.
pub fn describe() -> String {
    match selected() {
        Ok(on) if on.iter().all(|&o| o) => "all".into(),
        Ok(on) if on.iter().all(|&o| !o) => "none".into(),
        Ok(on) => names().zip(on).filter(|(_, o)| *o).map(|(n, _)| n).collect::<Vec<_>>().join(","),
        Err(e) => format!("refused: {e}"),
    }
}

/// `ITARFLOW_TRACT_REWRITES`, if set, is one that [`rewrite_for_cpu`] accepts.
pub fn check_setting() -> Result<(), String> {
    selected().map(|_| ())
}

/// tract's CPU plans get load-time rewrites before optimisation. On the model as typed from
/// ONNX (its symbols set): attention over a KV cache as one [`super::KvAttention`] op. Then, on
/// the decluttered model (constants folded, weights visible): softmaxes over a known length as
/// vectorised ops, ScatterElements (the fixed cache's write) as [`super::FastScatter`], the
/// adjoints of GELU and LayerNorm and LayerNorm itself as one op each ([`super::GeluGrad`],
/// [`super::LayerNormGrad`], [`super::LayerNormRows`]) and, where a register tile of
/// [`super::matrix_kernel`] runs (AVX-512F, or AVX2 and FMA), products by a constant matrix and
/// batched products of two activations as [`super::ConstLinear`] and [`super::BatchedMatMul`]
/// ops; last, sums and products repeating an operand over a leading or middle axis as
/// [`super::BroadcastBinary`]; those that `ITARFLOW_TRACT_REWRITES` selects. Returns the rewritten model, decluttered, for tract's
/// optimisation.
pub fn rewrite_for_cpu(mut model: TypedModel) -> TractResult<(TypedModel, Rewrites)> {
    let on = selected().map_err(TractError::msg)?;
    let mut done = [0usize; PASSES.len()];
    let mut decluttered = false;
    for (i, &(_, stage, pass)) in PASSES.iter().enumerate() {
        if stage != Stage::Typed && !decluttered {
            model = model.into_decluttered()?;
            decluttered = true;
        }
        if on[i] && (stage != Stage::Tiles || gemm::fast_path()) {
            done[i] = pass(&mut model)?;
        }
    }
    let [attentions, softmaxes, scatters, gelu_grads, layer_norm_grads, layer_norms, linears, matmuls, broadcasts] = done;
    Ok((model, Rewrites { attentions, softmaxes, linears, matmuls, scatters, gelu_grads, layer_norms, layer_norm_grads, broadcasts }))
}

#[cfg(test)]
mod tests {
    use super::{names, parse};

    #[test]
    fn the_setting_selects_rewrites_and_refuses_what_it_cannot_read() {
        assert_eq!(parse(None).unwrap(), [true; 9]);
        assert_eq!(parse(Some("none")).unwrap(), [false; 9]);
        let only = parse(Some("linears, matmuls")).unwrap();
        assert_eq!(names().zip(only).filter(|(_, on)| *on).map(|(n, _)| n).collect::<Vec<_>>(), ["linears", "matmuls"]);
        let but = parse(Some("-gelu_grads,-layer_norms")).unwrap();
        assert_eq!(names().zip(but).filter(|(_, on)| !*on).map(|(n, _)| n).collect::<Vec<_>>(), ["gelu_grads", "layer_norms"]);
        let unknown = parse(Some("-gelu")).unwrap_err();
        assert!(unknown.contains("ITARFLOW_TRACT_REWRITES=-gelu") && unknown.contains("no rewrite is called gelu"), "{unknown}");
        let mixed = parse(Some("linears,-matmuls")).unwrap_err();
        assert!(mixed.contains("not both"), "{mixed}");
    }
}

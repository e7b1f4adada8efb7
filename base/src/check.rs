//! Comparing a graph's outputs with a reference: the error measures and the tolerances shared
//! by `itarflow export --check` and `itarflow-rt check`.

use serde::Serialize;

/// Relative tolerances: fp32 1e-4 on z, logdet, a, b, cond and log p; 1e-3 on the score (a
/// gradient, relative to its largest entry). fp16 keeps LayerNorm, softmax, exponentials and
/// reductions in fp32 but rounds weights and activations to 11 significant bits (2^-11 = 4.9e-4
/// relative each); through a stack of layers this compounds to about 1e-2, and the score (a
/// difference of such quantities) to a few 1e-2.
///
/// "tf32" is fp32 graphs whose matrix products ran in TensorFloat-32 (CUDA with `--tf32`):
/// inputs rounded to 10 mantissa bits (2^-11 relative) in every product, measured at 1e-4 to
/// 5e-4 relative on an H200 for single graphs; tolerance 2e-3, the score 1e-2.
pub fn tolerance(precision: &str, output: &str) -> f64 {
    match (precision, output) {
        ("fp32", "score") => 1e-3,
        ("fp32", _) => 1e-4,
        ("tf32", "score") => 1e-2,
        ("tf32", _) => 2e-3,
        (_, "score") => 5e-2,
        _ => 2e-2,
    }
}

/// Max absolute error and relative error (max |ours - want| / max |want|; infinite when either
/// side has a NaN or Inf, or the lengths differ: `f64::max` drops NaN, so a fold over the
/// differences alone would score an output full of NaN as exact).
pub fn errors(ours: &[f32], want: &[f32]) -> (f64, f64) {
    if ours.len() != want.len() || ours.iter().chain(want).any(|v| !v.is_finite()) {
        return (f64::INFINITY, f64::INFINITY);
    }
    let max_abs = ours.iter().zip(want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let scale = want.iter().map(|b| b.abs() as f64).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    (max_abs, max_abs / scale)
}

/// One compared output of one graph on one engine.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub graph: String,
    pub precision: String,
    pub engine: String,
    pub output: String,
    pub max_abs: f64,
    /// Relative to the reference (see [`errors`]).
    pub rel: f64,
    pub tolerance: f64,
    pub pass: bool,
    /// Relative error against the first engine checked at the same precision (between
    /// providers); absent for that engine itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rel_vs_first: Option<f64>,
}

impl CheckRow {
    pub fn new(graph: &str, precision: &str, engine: &str, output: &str, ours: &[f32], want: &[f32]) -> Self {
        let (max_abs, rel) = errors(ours, want);
        let tolerance = tolerance(precision, output);
        Self {
            graph: graph.into(),
            precision: precision.into(),
            engine: engine.into(),
            output: output.into(),
            max_abs,
            rel,
            tolerance,
            pass: rel <= tolerance,
            rel_vs_first: None,
        }
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[CheckRow]) -> String {
    let mut s = format!(
        "{:<24} {:<5} {:<9} {:<7} {:>10} {:>10} {:>10} {:>8}\n",
        "graph", "prec", "engine", "output", "max abs", "rel", "vs first", "tol"
    );
    for r in rows {
        let vs = r.rel_vs_first.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<24} {:<5} {:<9} {:<7} {:>10.2e} {:>10.2e} {:>10} {:>8.0e}  {}\n",
            r.graph,
            r.precision,
            r.engine,
            r.output,
            r.max_abs,
            r.rel,
            vs,
            r.tolerance,
            if r.pass { "ok" } else { "FAIL" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_relative_to_the_reference_scale_and_nan_fails() {
        let (abs, rel) = errors(&[1.0, 2.1], &[1.0, 2.0]);
        assert!((abs - 0.1).abs() < 1e-6 && (rel - 0.05).abs() < 1e-6);
        assert_eq!(errors(&[f32::NAN, 2.0], &[1.0, 2.0]).1, f64::INFINITY);
        assert_eq!(errors(&[1.0, 2.0], &[1.0, f32::INFINITY]).1, f64::INFINITY);
        assert_eq!(errors(&[1.0], &[1.0, 2.0]).0, f64::INFINITY);
        assert!(!CheckRow::new("g", "fp32", "tract", "z", &[1.0, 2.1], &[1.0, 2.0]).pass);
    }
}

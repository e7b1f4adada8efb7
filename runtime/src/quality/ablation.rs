//! The paper's ablations of the sampler, measured: FLD and class accuracy against the number of
//! denoising steps (0 = the noisy phase-1 images at t_max, 1 = a single Tweedie step at t_max,
//! K > 1 = K Euler steps down to t_min), against the guidance scale, and against the guidance
//! style. Every configuration starts from the same prior noise (common random numbers, so the
//! differences are the settings' and not the draw's), and the phase-1 images of one guidance
//! setting are denoised once per step count instead of being sampled again.

use std::time::Instant;

use itarflow_base::GaussianNoise;
use ndarray::{Array4, ArrayView4, s};
use serde::Serialize;

use super::classifier::Classifier;
use super::generate::generate;
use super::report::{QualityReport, evaluate};
use crate::OnNonFinite;
use crate::RtError;
use crate::sampler::{CfgStyle, SampleSettings, Sampler};

/// What is varied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Study {
    DenoiseSteps,
    CfgScale,
    CfgStyle,
}

/// The configurations to measure around `base` (whose guidance and step count are the centre of
/// every study).
#[derive(Debug, Clone)]
pub struct Plan {
    pub base: SampleSettings,
    pub steps: Vec<usize>,
    pub scales: Vec<f64>,
    pub styles: Vec<CfgStyle>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub study: Study,
    pub cfg: f64,
    pub cfg_style: CfgStyle,
    pub denoise_steps: usize,
    pub fld: f64,
    pub class_accuracy: Option<f64>,
    /// Images that came out NaN/Inf (in phase 1, or in this row's phase 2) and were sampled again
    /// from new noise (the sampler's retry policy; 0 when it fails instead).
    pub redrawn: usize,
    /// Sampling time of this configuration (phase 1 counted once per guidance setting).
    pub seconds: f64,
    #[serde(skip)]
    pub report: QualityReport,
}

/// Runs `plan` on `labels.len()` images (noise from `seed`, `chunk` images per sampler run);
/// `progress(what)` names each configuration as it starts.
pub fn run(
    sampler: &Sampler,
    classifier: &Classifier,
    plan: &Plan,
    labels: &[i64],
    seed: u64,
    chunk: usize,
    progress: &mut dyn FnMut(String),
) -> Result<Vec<Row>, RtError> {
    let base = plan.base;
    let mut rows: Vec<Row> = Vec::new();
    let mut measure = |settings: &SampleSettings, steps: &[usize], study: Study, rows: &mut Vec<Row>| -> Result<(), RtError> {
        let g = settings.guidance;
        progress(format!("phase 1, cfg {} {:?}", g.scale, g.style));
        let start = Instant::now();
        let phase1 = generate(sampler, labels, &SampleSettings { denoise_steps: 0, ..*settings }, seed, chunk, &mut |_| {})?;
        let (noisy, redrawn) = (phase1.images, phase1.redrawn.len());
        let phase1_s = start.elapsed().as_secs_f64();
        for &k in steps {
            progress(format!("cfg {} {:?}, {k} denoising steps", g.scale, g.style));
            let start = Instant::now();
            let (x, again) = if k == 0 {
                (noisy.clone(), 0)
            } else {
                denoise_redrawing(sampler, noisy.view(), labels, &SampleSettings { denoise_steps: k, ..*settings }, seed, chunk)?
            };
            let seconds = phase1_s + start.elapsed().as_secs_f64();
            let report = evaluate(classifier, x.view(), labels)?;
            rows.push(Row {
                study,
                cfg: g.scale,
                cfg_style: g.style,
                denoise_steps: k,
                fld: report.fld,
                class_accuracy: report.class_accuracy,
                redrawn: redrawn + again,
                seconds,
                report,
            });
        }
        Ok(())
    };
    measure(&base, &plan.steps, Study::DenoiseSteps, &mut rows)?;
    let centre = |rows: &[Row]| rows.iter().find(|r| r.study == Study::DenoiseSteps && r.denoise_steps == base.denoise_steps).cloned();
    for &w in &plan.scales {
        match centre(&rows).filter(|_| w == base.guidance.scale) {
            Some(r) => rows.push(Row { study: Study::CfgScale, ..r }),
            None => {
                let mut s = base;
                s.guidance.scale = w;
                measure(&s, &[base.denoise_steps], Study::CfgScale, &mut rows)?;
            }
        }
    }
    for &style in &plan.styles {
        match centre(&rows).filter(|_| style == base.guidance.style) {
            Some(r) => rows.push(Row { study: Study::CfgStyle, ..r }),
            None => {
                let mut s = base;
                s.guidance.style = style;
                measure(&s, &[base.denoise_steps], Study::CfgStyle, &mut rows)?;
            }
        }
    }
    Ok(rows)
}

/// Noise stream of the images drawn again after a non-finite phase 2 (seed ^ this).
const REDRAW_STREAM: u64 = 0x2f6b_d1e3_a5c7_0941;

/// Phase 2 of `x` in runs of `chunk` images. Images that come out NaN/Inf are sampled again, both
/// phases with these settings, from new noise (a stream per image drawn from `seed`), as the
/// sampler's [`OnNonFinite`] policy allows (with none, the first is named in the error). Returns
/// the images and how many were drawn again.
pub fn denoise_redrawing(
    sampler: &Sampler,
    x: ArrayView4<f32>,
    labels: &[i64],
    settings: &SampleSettings,
    seed: u64,
    chunk: usize,
) -> Result<(Array4<f32>, usize), RtError> {
    let n = labels.len();
    let mut out = Array4::zeros(x.raw_dim());
    let mut bad = Vec::new();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let (part, b) =
            sampler.denoise_keeping_non_finite(x.slice(s![start..end, .., .., ..]), &labels[start..end], settings, &mut |_| {})?;
        out.slice_mut(s![start..end, .., .., ..]).assign(&part);
        bad.extend(b.into_iter().map(|i| start + i));
    }
    if bad.is_empty() {
        return Ok((out, 0));
    }
    if sampler.on_non_finite() == OnNonFinite::Fail {
        return Err(RtError::NonFinite { index: bad[0], attempts: 1 });
    }
    // One stream per image, from its index: the new images do not depend on the chunk size.
    let per_z = sampler.model().noise_len();
    let z: Vec<f32> = bad
        .iter()
        .flat_map(|&i| GaussianNoise::new(seed ^ REDRAW_STREAM ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).sample_f32(per_z))
        .collect();
    let ys: Vec<i64> = bad.iter().map(|&i| labels[i]).collect();
    let again = sampler.sample_with(&z, &ys, settings, &mut |_| {}).map_err(|e| match e {
        RtError::NonFinite { index, attempts } => RtError::NonFinite { index: bad[index], attempts: attempts + 1 },
        other => other,
    })?;
    for (k, &i) in bad.iter().enumerate() {
        out.slice_mut(s![i, .., .., ..]).assign(&again.images.slice(s![k, .., .., ..]));
    }
    Ok((out, bad.len()))
}

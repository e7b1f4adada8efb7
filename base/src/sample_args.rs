//! Command-line flags shared by `itarflow sample` / `denoise` (Burn) and `itarflow-rt sample` /
//! `denoise`: where the prior noise and labels come from, the sampling and denoising settings
//! (every one defaulting to the model's or the package's), and where the images go.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::inputs::{self, InputError};
use crate::npz::{Array, Npz};
use crate::sampling::{CfgStyle, SampleSettings};

/// Prior noise and labels.
#[derive(Args, Debug, Clone)]
pub struct NoiseArgs {
    /// npz with prior noise `z` (B,T,c) float32 and optional labels `y` (B,): a reproducible run.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Seed of the prior noise (and of random labels) when no --noise is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of images when no --noise is given.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Class of every image (default: random classes for a conditional model).
    #[arg(long)]
    pub class: Option<i64>,
    /// Sample N images of every class instead (a grid with one row per class).
    #[arg(long, conflicts_with_all = ["class", "noise", "num"])]
    pub per_class: Option<usize>,
}

impl NoiseArgs {
    /// The prior noise (B, `tokens`, `token_dim`) row-major and the B labels.
    pub fn draw(&self, tokens: usize, token_dim: usize, num_classes: usize) -> Result<(Vec<f32>, Vec<i64>), InputError> {
        let per = tokens * token_dim;
        if let Some(path) = &self.noise {
            let npz = Npz::read(path)?;
            let (b, z) = inputs::prior_noise(&npz, tokens, token_dim)?;
            let given = inputs::labels(&npz, b, num_classes)?;
            return Ok((z, inputs::choose_labels(given, self.class, b, self.seed, num_classes, "--class")?));
        }
        let labels = match self.per_class {
            Some(n) => {
                if num_classes == 0 || n == 0 {
                    return Err(InputError::Invalid("--per-class needs a class-conditional model and N >= 1".into()));
                }
                (0..num_classes as i64).flat_map(|k| std::iter::repeat_n(k, n)).collect()
            }
            None => {
                if self.num == 0 {
                    return Err(InputError::Invalid("--num must be at least 1".into()));
                }
                inputs::choose_labels(None, self.class, self.num, self.seed, num_classes, "--class")?
            }
        };
        Ok((crate::noise::prior_noise(self.seed, labels.len() * per), labels))
    }

    /// Grid columns: one row per class with --per-class, else a square.
    pub fn grid_columns(&self, images: usize) -> usize {
        self.per_class.unwrap_or((images as f64).sqrt().ceil() as usize)
    }
}

/// Guidance and noise-level settings; each unset flag keeps the default given to [`Self::apply`].
#[derive(Args, Debug, Clone)]
pub struct SettingsArgs {
    /// Guidance scale w (0 = none; default: the model's or package's).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// How guided scale and shift are combined.
    #[arg(long, value_enum)]
    pub cfg_style: Option<CfgStyle>,
    /// Layers guided, counted in sampling order: a number, or `all` (the paper guides only the first).
    #[arg(long)]
    pub guide_layers: Option<String>,
    /// Ramp the guidance scale linearly over the tokens.
    #[arg(long)]
    pub anneal: bool,
    /// Attention temperature of the unconditional branch.
    #[arg(long, default_value_t = 1.0)]
    pub uncond_temp: f64,
    /// Noise level sampled at (default: the model's t_max).
    #[arg(long)]
    pub t_max: Option<f64>,
    /// Noise level of the last denoising step (default: the model's t_min).
    #[arg(long)]
    pub t_min: Option<f64>,
    /// Denoising steps; 0 returns the noisy phase-1 images (default: 10, or the package's).
    #[arg(long)]
    pub denoise_steps: Option<usize>,
    /// Clip each Tweedie estimate to [-1, 1].
    #[arg(long)]
    pub clip: bool,
}

impl SettingsArgs {
    /// `defaults` with the given flags applied and checked (`num_classes` 0: no guidance).
    pub fn apply(&self, mut s: SampleSettings, num_classes: usize) -> Result<SampleSettings, InputError> {
        let g = &mut s.guidance;
        if let Some(w) = self.cfg {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(InputError::Invalid(format!("--cfg must be >= 0, got {w}")));
            }
            g.scale = w;
        }
        if g.scale > 0.0 && num_classes == 0 {
            return Err(InputError::Invalid("--cfg needs a class-conditional model; this one is unconditional".into()));
        }
        if let Some(style) = self.cfg_style {
            g.style = style;
        }
        if let Some(text) = &self.guide_layers {
            g.layers = if text == "all" {
                usize::MAX
            } else {
                text.parse().map_err(|_| InputError::Invalid(format!("--guide-layers takes a number or 'all', got '{text}'")))?
            };
        }
        g.annealed |= self.anneal;
        g.uncond_temperature = inputs::positive("--uncond-temp", self.uncond_temp)?;
        s.t_max = inputs::positive("--t-max", self.t_max.unwrap_or(s.t_max))?;
        s.t_min = inputs::positive("--t-min", self.t_min.unwrap_or(s.t_min))?;
        if s.t_min > s.t_max {
            return Err(InputError::Invalid(format!("--t-min {} is above --t-max {}", s.t_min, s.t_max)));
        }
        s.denoise_steps = self.denoise_steps.unwrap_or(s.denoise_steps);
        s.clip |= self.clip;
        Ok(s)
    }
}

/// The denoiser's settings (phase 2 alone, on given images).
#[derive(Args, Debug, Clone)]
pub struct DenoiseArgs {
    /// npz with images `x` (B,C,H,W) float32 and optional labels `y` (B,) int64.
    #[arg(long)]
    pub input: PathBuf,
    /// Noise level of the input images (default: the model's t_max).
    #[arg(long)]
    pub t_max: Option<f64>,
    /// Noise level of the last step (default: the model's t_min).
    #[arg(long)]
    pub t_min: Option<f64>,
    /// Euler steps (score evaluations); 1 is the single-step Tweedie denoiser at t-max.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Clip each Tweedie estimate to [-1, 1].
    #[arg(long)]
    pub clip: bool,
}

impl DenoiseArgs {
    /// `defaults` (its noise levels: the model's) with the flags applied and checked; no guidance.
    pub fn apply(&self, mut s: SampleSettings) -> Result<SampleSettings, InputError> {
        s.guidance = Default::default();
        s.t_max = inputs::positive("--t-max", self.t_max.unwrap_or(s.t_max))?;
        s.t_min = inputs::positive("--t-min", self.t_min.unwrap_or(s.t_min))?;
        if s.t_min > s.t_max {
            return Err(InputError::Invalid(format!("--t-min {} is above --t-max {}", s.t_min, s.t_max)));
        }
        if self.steps == 0 {
            return Err(InputError::Invalid("--steps must be at least 1".into()));
        }
        s.denoise_steps = self.steps;
        s.clip = self.clip;
        Ok(s)
    }
}

/// Where sampled images go.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// npz to write, with the images `x` (B,C,H,W) and labels `y`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// PNG grid of the images.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// Fails when neither file is asked for.
    pub fn require_some(&self) -> Result<(), InputError> {
        if self.output.is_none() && self.out.is_none() {
            return Err(InputError::Invalid("nothing to write: pass --output OUT.npz and/or --out grid.png".into()));
        }
        Ok(())
    }

    /// Writes the images (and labels, when any is a class) to the npz and/or the PNG grid.
    pub fn write(&self, values: &[f32], dims: [usize; 4], labels: Option<&[i64]>, cols: usize) -> Result<(), InputError> {
        write_images(values, dims, labels, self.output.as_deref(), self.out.as_deref(), cols)
    }
}

/// Writes images as npz (`x`, and `y` when labels are given) and/or a PNG grid of `cols` columns.
pub fn write_images(
    values: &[f32],
    dims: [usize; 4],
    labels: Option<&[i64]>,
    npz: Option<&Path>,
    png: Option<&Path>,
    cols: usize,
) -> Result<(), InputError> {
    if let Some(path) = npz {
        let mut out = Npz::new(path);
        out.insert("x", Array::f32(&dims, values.to_vec()));
        if let Some(y) = labels {
            out.insert("y", Array::i64(&[dims[0]], y.to_vec()));
        }
        out.write()?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = png {
        crate::grid::save_grid(path, values, dims, cols).map_err(|e| InputError::Invalid(e.to_string()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

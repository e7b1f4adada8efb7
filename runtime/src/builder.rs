//! [`Sampler`]: a model package on a provider with its sampling settings, built with
//! [`SamplerBuilder`]. The API applications embed:
//!
//! ```no_run
//! use itarflow_rt::{Model, Provider, Sampler};
//! let model = Model::load("models/fmnist/package")?;
//! let sampler = Sampler::builder(model).provider(Provider::Tract).cfg(2.0).seed(7).classes(vec![3; 8]).build()?;
//! let samples = sampler.sample(&mut |p| eprintln!("{p:?}"))?;
//! assert_eq!(samples.images.shape(), &[8, 1, 28, 28]);
//! # Ok::<(), itarflow_rt::RtError>(())
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use itarflow_base::GaussianNoise;
use itarflow_base::manifest::GraphKind;
use ndarray::{Array1, Array4, ArrayView4};

use crate::graphs::Loaded;
use crate::memory;
use crate::model::Model;
use crate::provider::{Engine, Precision, Provider, ProviderOptions};
use crate::sampler::{self, CfgStyle, Progress, SampleSettings, ScoreForm, StepCache};
use crate::{RtError, with_graphs};

/// What to do when a sample comes out NaN or Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNonFinite {
    /// Return [`RtError::NonFinite`] naming the first such image.
    #[default]
    Fail,
    /// Sample those images again from new noise (same labels), up to this many extra attempts,
    /// then fail.
    Retry(usize),
}

/// Classes of the images [`Sampler::sample`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classes {
    /// `n` images of classes drawn from the seed (unconditional for an unconditional model).
    Random(usize),
    /// One image per label (-1 = unconditional).
    Given(Vec<i64>),
}

/// Sampled images with their labels.
#[derive(Debug, Clone)]
pub struct Samples {
    /// (B, C, H, W).
    pub images: Array4<f32>,
    pub labels: Vec<i64>,
    /// Images that were sampled again from new noise after a NaN/Inf, with the attempts taken.
    pub retried: Vec<(usize, usize)>,
}

/// Builds a [`Sampler`]; every setting starts at the package's default.
#[derive(Debug, Clone)]
pub struct SamplerBuilder {
    model: Arc<Model>,
    provider: Provider,
    options: ProviderOptions,
    precision: Precision,
    settings: SampleSettings,
    batch: usize,
    seed: u64,
    classes: Classes,
    on_non_finite: OnNonFinite,
    memory_budget: Option<usize>,
    score_form: ScoreForm,
    step_cache: Option<StepCache>,
}

impl SamplerBuilder {
    pub fn provider(mut self, p: Provider) -> Self {
        self.provider = p;
        self
    }
    /// ONNX Runtime library and TensorRT settings.
    pub fn provider_options(mut self, o: ProviderOptions) -> Self {
        self.options = o;
        self
    }
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    /// Images per phase-1 batch (0 = all at once; guided layers run twice as many rows).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// The labels of the images, one per image (-1 = unconditional).
    pub fn classes(mut self, labels: Vec<i64>) -> Self {
        self.classes = Classes::Given(labels);
        self
    }
    /// `n` images of random classes (drawn from the seed).
    pub fn num_images(mut self, n: usize) -> Self {
        self.classes = Classes::Random(n);
        self
    }
    /// Every sampling setting at once (guidance, noise levels, steps, clip, score batch).
    pub fn settings(mut self, s: SampleSettings) -> Self {
        self.settings = SampleSettings { denoise_batch: self.settings.denoise_batch, ..s };
        self
    }
    /// Guidance scale w (0 = none).
    pub fn cfg(mut self, w: f64) -> Self {
        self.settings.guidance.scale = w;
        self
    }
    pub fn cfg_style(mut self, s: CfgStyle) -> Self {
        self.settings.guidance.style = s;
        self
    }
    /// Guided layers in sampling order (`usize::MAX` = all).
    pub fn guide_layers(mut self, n: usize) -> Self {
        self.settings.guidance.layers = n;
        self
    }
    pub fn annealed(mut self, on: bool) -> Self {
        self.settings.guidance.annealed = on;
        self
    }
    /// Attention temperature of the unconditional branch.
    pub fn uncond_temperature(mut self, t: f64) -> Self {
        self.settings.guidance.uncond_temperature = t;
        self
    }
    pub fn t_max(mut self, t: f64) -> Self {
        self.settings.t_max = t;
        self
    }
    pub fn t_min(mut self, t: f64) -> Self {
        self.settings.t_min = t;
        self
    }
    /// Phase-2 steps (0 returns the phase-1 images at t_max).
    pub fn denoise_steps(mut self, k: usize) -> Self {
        self.settings.denoise_steps = k;
        self
    }
    /// Clip each Tweedie estimate to [-1, 1].
    pub fn clip(mut self, on: bool) -> Self {
        self.settings.clip = on;
        self
    }
    pub fn on_non_finite(mut self, p: OnNonFinite) -> Self {
        self.on_non_finite = p;
        self
    }
    /// Bytes the score evaluations may use: phase 2 (and `score`) run as many images at once as
    /// fit (see [`memory::score_bytes_per_image`]). Default: 64 images per evaluation.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }
    /// Images per score evaluation, overriding the memory budget.
    pub fn score_batch(mut self, n: usize) -> Self {
        self.settings.denoise_batch = n;
        self.memory_budget = None;
        self
    }
    pub fn score_form(mut self, f: ScoreForm) -> Self {
        self.score_form = f;
        self
    }
    /// KV cache of phase 1 (default: fixed for TensorRT, growing elsewhere).
    pub fn step_cache(mut self, c: StepCache) -> Self {
        self.step_cache = Some(c);
        self
    }

    /// Checks the settings and loads the graphs on the provider (for `Auto`, the first that
    /// works; [`Sampler::skipped`] says why the others did not).
    pub fn build(self) -> Result<Sampler, RtError> {
        let s = &self.settings;
        let c = &self.model.manifest.model;
        if !(s.t_max > 0.0 && s.t_min > 0.0 && s.t_min <= s.t_max && s.t_max.is_finite()) {
            return Err(RtError::Invalid(format!("need 0 < t_min <= t_max, got t_min {} and t_max {}", s.t_min, s.t_max)));
        }
        if !(s.guidance.scale >= 0.0 && s.guidance.scale.is_finite()) {
            return Err(RtError::Invalid(format!("the guidance scale must be >= 0, got {}", s.guidance.scale)));
        }
        if s.guidance.scale > 0.0 && c.num_classes == 0 {
            return Err(RtError::Invalid("guidance needs a class-conditional model; this one is unconditional".into()));
        }
        if s.guidance.uncond_temperature.is_nan() || s.guidance.uncond_temperature <= 0.0 {
            return Err(RtError::Invalid(format!("the unconditional temperature must be > 0, got {}", s.guidance.uncond_temperature)));
        }
        let (given, n) = match &self.classes {
            Classes::Given(y) => (Some(y.clone()), y.len()),
            Classes::Random(n) => (None, *n),
        };
        let labels = itarflow_base::inputs::choose_labels(given, None, n, self.seed, c.num_classes, "the sampler's classes")
            .map_err(|e| RtError::Invalid(e.to_string()))?;
        let mut settings = self.settings;
        if let Some(budget) = self.memory_budget {
            settings.denoise_batch = memory::batch_for_budget(&self.model.manifest, self.score_form, budget);
        }
        let (loaded, provider, skipped) = Loaded::open_auto(self.model.clone(), self.provider, self.precision, &self.options)?;
        let step_cache = self.step_cache.unwrap_or(if provider == Provider::TensorRt { StepCache::Fixed } else { StepCache::Growing });
        Ok(Sampler {
            loaded,
            provider,
            skipped,
            settings,
            batch: self.batch,
            seed: self.seed,
            labels,
            on_non_finite: self.on_non_finite,
            score_form: self.score_form,
            step_cache,
        })
    }
}

/// A model package loaded on a provider, ready to sample, score and evaluate log p.
/// `Send + Sync`: one sampler can serve several threads (ONNX Runtime sessions run one call at
/// a time each; tract plans run concurrently).
pub struct Sampler {
    loaded: Loaded,
    provider: Provider,
    skipped: Vec<(Provider, String)>,
    settings: SampleSettings,
    batch: usize,
    seed: u64,
    labels: Vec<i64>,
    on_non_finite: OnNonFinite,
    score_form: ScoreForm,
    step_cache: StepCache,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Sampler>();
};

impl Sampler {
    /// A builder with the package's defaults: tract, fp32, 16 random-class images, seed 0.
    pub fn builder(model: impl Into<Arc<Model>>) -> SamplerBuilder {
        let model = model.into();
        let settings = sampler::defaults(&model);
        SamplerBuilder {
            model,
            provider: Provider::Tract,
            options: ProviderOptions::default(),
            precision: Precision::Fp32,
            settings,
            batch: 0,
            seed: 0,
            classes: Classes::Random(16),
            on_non_finite: OnNonFinite::Fail,
            memory_budget: None,
            score_form: ScoreForm::Whole,
            step_cache: None,
        }
    }

    pub fn model(&self) -> &Model {
        self.loaded.model()
    }

    /// The provider running the graphs (what `Auto` chose).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Providers `Auto` skipped, with the reason each could not run.
    pub fn skipped(&self) -> &[(Provider, String)] {
        &self.skipped
    }

    pub fn settings(&self) -> &SampleSettings {
        &self.settings
    }

    /// The labels [`Self::sample`] uses.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    pub fn step_cache(&self) -> StepCache {
        self.step_cache
    }

    /// The graphs on the provider (for tools that run single graphs).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// Loads (and optimises) every graph sampling needs now rather than on first use.
    pub fn warm_up(&self) -> Result<(), RtError> {
        let mut kinds = vec![GraphKind::Cond, self.step_cache.graph_kind()];
        kinds.extend(self.score_form.graph_kinds());
        for kind in kinds {
            with_graphs!(&self.loaded, g => g.get(kind).map(|_| ()))?;
        }
        Ok(())
    }

    /// Samples the builder's images from noise drawn from its seed.
    pub fn sample(&self, progress: &mut dyn FnMut(Progress)) -> Result<Samples, RtError> {
        let z = itarflow_base::prior_noise(self.seed, self.labels.len() * self.model().noise_len());
        self.sample_from(&z, &self.labels, progress)
    }

    /// Samples images from given prior noise `z` (B, T, c) and labels (B,).
    pub fn sample_from(&self, z: &[f32], labels: &[i64], progress: &mut dyn FnMut(Progress)) -> Result<Samples, RtError> {
        let c = self.model().manifest.model.clone();
        itarflow_base::inputs::check_labels(labels, labels.len(), c.num_classes, "the labels")
            .map_err(|e| RtError::Invalid(e.to_string()))?;
        let (per_z, per_x) = (self.model().noise_len(), self.model().image_len());
        if z.len() != labels.len() * per_z {
            return Err(RtError::Invalid(format!(
                "prior noise has {} values; {} images need {} each",
                z.len(),
                labels.len(),
                per_z
            )));
        }
        let mut x = self.run_both(z, labels, progress)?;
        let mut retried = Vec::new();
        let mut bad = sampler::non_finite(&x, per_x);
        let mut attempt = 0;
        while !bad.is_empty() {
            let max = match self.on_non_finite {
                OnNonFinite::Retry(n) => n,
                OnNonFinite::Fail => 0,
            };
            if attempt >= max {
                return Err(RtError::NonFinite { index: bad[0], attempts: attempt + 1 });
            }
            attempt += 1;
            progress(Progress::Retry { images: bad.len(), attempt });
            // New noise from a stream of its own for each attempt.
            let mut noise = GaussianNoise::new(self.seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(attempt as u64));
            let z2: Vec<f32> = bad.iter().flat_map(|_| noise.sample_f32(per_z)).collect();
            let y2: Vec<i64> = bad.iter().map(|&i| labels[i]).collect();
            let x2 = self.run_both(&z2, &y2, &mut |_| {})?;
            let still = sampler::non_finite(&x2, per_x);
            for (k, &i) in bad.iter().enumerate() {
                x[i * per_x..(i + 1) * per_x].copy_from_slice(&x2[k * per_x..(k + 1) * per_x]);
                if !still.contains(&k) {
                    retried.push((i, attempt));
                }
            }
            bad = still.into_iter().map(|k| bad[k]).collect();
        }
        let images = Array4::from_shape_vec((labels.len(), c.in_channels, c.img_size, c.img_size), x)
            .map_err(|e| RtError::Invalid(e.to_string()))?;
        Ok(Samples { images, labels: labels.to_vec(), retried })
    }

    /// Phase 1 in batches of `self.batch`, then phase 2 over all images.
    fn run_both(&self, z: &[f32], labels: &[i64], progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>, RtError> {
        let b = labels.len();
        let mut x = std::thread::scope(|scope| {
            // Phase 2's graphs get ready on another core while phase 1 runs.
            let ready = (self.settings.denoise_steps > 0).then(|| {
                scope.spawn(|| {
                    with_graphs!(&self.loaded, g => sampler::prepare_phase2(g, self.score_form, b, self.settings.denoise_batch))
                })
            });
            let x = self.invert_all(z, labels, progress)?;
            if let Some(handle) = ready {
                handle.join().map_err(|_| RtError::Invalid("preparing the denoiser's graphs panicked".into()))??;
            }
            Ok::<_, RtError>(x)
        })?;
        with_graphs!(&self.loaded, g => sampler::denoise(g, self.score_form, &mut x, labels, &self.settings, progress))?;
        Ok(x)
    }

    /// Phase 1 of all images: in batches of `self.batch` (default: all at once, or, on an engine
    /// whose runs proceed in parallel, one batch per thread), run by as many worker threads as the
    /// engine can use; progress is reported from this thread.
    fn invert_all(&self, z: &[f32], labels: &[i64], progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>, RtError> {
        let b = labels.len();
        let per_z = self.model().noise_len();
        let (concurrent, threads) = with_graphs!(&self.loaded, g => (g.get(GraphKind::Cond)?[0].concurrent(), g.threads()));
        let workers = if concurrent { threads } else { 1 };
        let chunks = if self.batch == 0 { sampler::split(b, workers) } else { sampler::chunks(b, self.batch) };
        let batches = chunks.len();
        let next = AtomicUsize::new(0);
        let parts: Mutex<Vec<Option<Vec<f32>>>> = Mutex::new(vec![None; batches]);
        let (tx, rx) = mpsc::channel::<Progress>();
        std::thread::scope(|scope| {
            let (next, chunks, parts) = (&next, &chunks, &parts);
            let handles: Vec<_> = (0..workers.min(batches))
                .map(|_| {
                    let tx = tx.clone();
                    scope.spawn(move || -> Result<(), RtError> {
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(start, n)) = chunks.get(k) else { return Ok(()) };
                            let mut report = |p| {
                                if let Progress::Invert { layer, layers, .. } = p {
                                    let _ = tx.send(Progress::Invert { layer, layers, batch: k + 1, batches });
                                }
                            };
                            let zs = &z[start * per_z..(start + n) * per_z];
                            let ys = &labels[start..start + n];
                            let part = with_graphs!(&self.loaded, g => sampler::invert(g, zs, ys, &self.settings, self.step_cache, &mut report))?;
                            parts.lock().map_err(|_| RtError::Invalid("phase-1 results lock poisoned".into()))?[k] = Some(part);
                        }
                    })
                })
                .collect();
            drop(tx);
            for p in rx {
                progress(p);
            }
            for h in handles {
                h.join().map_err(|_| RtError::Invalid("a phase-1 thread panicked".into()))??;
            }
            Ok::<(), RtError>(())
        })?;
        let parts = parts.into_inner().map_err(|_| RtError::Invalid("phase-1 results lock poisoned".into()))?;
        Ok(parts.into_iter().flatten().flatten().collect())
    }

    /// Phase 2 alone: denoises images (B, C, H, W) with labels from t_max to t_min.
    pub fn denoise(&self, x: ArrayView4<f32>, labels: &[i64], progress: &mut dyn FnMut(Progress)) -> Result<Array4<f32>, RtError> {
        let mut v: Vec<f32> = x.iter().copied().collect();
        if labels.len() != x.shape()[0] {
            return Err(RtError::Invalid(format!("{} labels for {} images", labels.len(), x.shape()[0])));
        }
        with_graphs!(&self.loaded, g => sampler::denoise(g, self.score_form, &mut v, labels, &self.settings, progress))?;
        if let Some(&i) = sampler::non_finite(&v, self.model().image_len()).first() {
            return Err(RtError::NonFinite { index: i, attempts: 1 });
        }
        Array4::from_shape_vec(x.raw_dim(), v).map_err(|e| RtError::Invalid(e.to_string()))
    }

    /// grad_x log p and log p of images (B, C, H, W) at noise levels `t` (B,) with labels.
    pub fn score(&self, x: ArrayView4<f32>, t: &[f32], labels: &[i64]) -> Result<(Array4<f32>, Array1<f32>), RtError> {
        let v: Vec<f32> = x.iter().copied().collect();
        let (s, lp) =
            with_graphs!(&self.loaded, g => sampler::score(g, self.score_form, &v, t, labels, self.settings.denoise_batch))?;
        let s = Array4::from_shape_vec(x.raw_dim(), s).map_err(|e| RtError::Invalid(e.to_string()))?;
        Ok((s, Array1::from(lp)))
    }

    /// log p(x | t, y) of images (B, C, H, W) through the per-layer forward graphs (no gradient).
    pub fn log_prob(&self, x: ArrayView4<f32>, t: &[f32], labels: &[i64]) -> Result<Array1<f32>, RtError> {
        let v: Vec<f32> = x.iter().copied().collect();
        let lp = with_graphs!(&self.loaded, g => sampler::log_prob(g, &v, t, labels, self.settings.denoise_batch))?;
        Ok(Array1::from(lp))
    }
}

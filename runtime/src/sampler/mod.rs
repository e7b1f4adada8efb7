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
//!
//! The two phases, the score and log p are functions over a [`GraphSet`](crate::GraphSet), one
//! module each: [`invert`] (phase 1), [`denoise`] (phase 2), [`score`] and [`log_prob`]; the
//! sampler drives them (phase 1 split over threads by `parallel`, NaN samples redrawn by
//! `retry`).

mod builder;
mod cancel;
mod denoise;
mod invert;
mod layout;
mod parallel;
mod retry;
mod score;
mod settings;

use std::sync::Arc;

use itarflow_base::manifest::GraphKind;
use ndarray::{Array1, Array4, ArrayView4};

pub use builder::{Classes, SamplerBuilder};
pub use cancel::Cancel;
pub use denoise::{Denoising, denoise, non_finite};
pub use invert::{GuidedInputs, Inversion, empty_caches, guided_loop_kind, invert};
pub use itarflow_base::sampling::{CfgStyle, Guidance, SampleSettings, noise_levels};
pub use retry::{OnNonFinite, SampleRun, resample_non_finite};
pub use score::{log_prob, prepare_phase2, score};
pub use settings::{Progress, ScoreForm, StepCache, defaults, validate};

use crate::graphs::Loaded;
use crate::model::Model;
use crate::provider::{Engine, Precision, Provider};
use crate::{RtError, with_graphs};

/// Sampled images with their labels.
#[derive(Debug, Clone)]
pub struct Samples {
    /// (B, C, H, W).
    pub images: Array4<f32>,
    pub labels: Vec<i64>,
    /// Images that were sampled again from new noise after a NaN/Inf, with the attempts taken.
    pub retried: Vec<(usize, usize)>,
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
    /// Phase 1 and phase 2 as loops of the fused graphs (on the device on a GPU).
    resident: bool,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Sampler>();
};

impl Sampler {
    /// A builder with the package's defaults: tract, fp32, 16 random-class images, seed 0.
    pub fn builder(model: impl Into<Arc<Model>>) -> SamplerBuilder {
        SamplerBuilder::new(model.into())
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

    /// The precision of the graphs it runs.
    pub fn precision(&self) -> Precision {
        self.loaded.precision()
    }

    /// The labels [`Self::sample`] uses.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    pub fn step_cache(&self) -> StepCache {
        self.step_cache
    }

    /// Whether the phases run as loops of the fused graphs (on the device on a GPU).
    pub fn resident(&self) -> bool {
        self.resident
    }

    /// How phase 1 runs.
    pub fn inversion(&self) -> Inversion {
        if self.resident { Inversion::Loop } else { Inversion::Steps(self.step_cache) }
    }

    /// How phase 2 runs (the layer-wise score has no loop form).
    pub fn denoising(&self) -> Denoising {
        if self.resident && self.score_form == ScoreForm::Whole { Denoising::Loop } else { Denoising::Scores(self.score_form) }
    }

    /// The graph kinds sampling runs.
    fn sampling_kinds(&self) -> Vec<GraphKind> {
        let mut kinds = vec![GraphKind::Cond];
        match self.inversion() {
            Inversion::Steps(cache) => kinds.push(cache.graph_kind()),
            Inversion::Loop => {
                kinds.push(GraphKind::Invert);
                if self.settings.guidance.scale > 0.0 && self.model().num_classes() > 0 {
                    kinds.push(invert::guided_loop_kind(self.model(), self.settings.guidance.style));
                }
            }
        }
        match self.denoising() {
            Denoising::Scores(form) => kinds.extend(form.graph_kinds()),
            Denoising::Loop => kinds.push(GraphKind::DenoiseStep),
        }
        kinds
    }

    /// The graphs on the provider (for tools that run single graphs).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// Loads (and optimises) every graph sampling needs now rather than on first use.
    pub fn warm_up(&self) -> Result<(), RtError> {
        for kind in self.sampling_kinds() {
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
        self.sample_with(z, labels, &self.settings, progress)
    }

    /// [`Self::sample_from`] with other sampling settings than the builder's (checked first; the
    /// phase-2 batch stays the sampler's): one sampler serves requests with their own guidance
    /// and steps, its graphs loaded once.
    pub fn sample_with(
        &self,
        z: &[f32],
        labels: &[i64],
        settings: &SampleSettings,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Samples, RtError> {
        self.sample_cancellable(z, labels, settings, &Cancel::default(), progress)
    }

    /// [`Self::sample_with`] that stops at its next step (a phase-1 token or layer, a denoising
    /// step) with [`RtError::Cancelled`] once `cancel` is set, from any thread.
    pub fn sample_cancellable(
        &self,
        z: &[f32],
        labels: &[i64],
        settings: &SampleSettings,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Samples, RtError> {
        let settings = SampleSettings { denoise_batch: self.settings.denoise_batch, ..*settings };
        validate(&settings, self.model().num_classes())?;
        let c = self.model().manifest.model.clone();
        itarflow_base::inputs::check_labels(labels, labels.len(), c.num_classes, "the labels")?;
        let (per_z, per_x) = (self.model().noise_len(), self.model().image_len());
        if z.len() != labels.len() * per_z {
            return Err(RtError::Input(format!("prior noise has {} values; {} images need {} each", z.len(), labels.len(), per_z)));
        }
        let mut x = self.run_both(z, labels, &settings, cancel, progress)?;
        let retried = retry::resample_non_finite(
            &mut x,
            (z, labels),
            (per_z, per_x),
            self.seed,
            self.on_non_finite,
            &mut |z2, y2| self.run_both(z2, y2, &settings, cancel, &mut |_| {}),
            progress,
        )?;
        let images = Array4::from_shape_vec((labels.len(), c.in_channels, c.img_size, c.img_size), x)
            .map_err(|e| RtError::Internal(e.to_string()))?;
        Ok(Samples { images, labels: labels.to_vec(), retried })
    }

    /// Phase 1 in batches of `self.batch`, then phase 2 over all images.
    fn run_both(
        &self,
        z: &[f32],
        labels: &[i64],
        settings: &SampleSettings,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<f32>, RtError> {
        let b = labels.len();
        let mut x = std::thread::scope(|scope| {
            // Phase 2's graphs get ready on another core while phase 1 runs.
            let ready = match self.denoising() {
                Denoising::Scores(form) if settings.denoise_steps > 0 => {
                    Some(scope.spawn(move || with_graphs!(&self.loaded, g => prepare_phase2(g, form, b, settings.denoise_batch))))
                }
                _ => None,
            };
            let x = self.invert_all(z, labels, settings, cancel, progress)?;
            if let Some(handle) = ready {
                handle.join().map_err(|_| RtError::Internal("preparing the denoiser's graphs panicked".into()))??;
            }
            Ok::<_, RtError>(x)
        })?;
        with_graphs!(&self.loaded, g => denoise(g, self.denoising(), &mut x, labels, settings, cancel, progress))?;
        Ok(x)
    }

    /// Phase 1 of all images: in batches of `self.batch` (default: all at once, or, on an engine
    /// whose runs proceed in parallel, one batch per thread), run by as many worker threads as the
    /// engine can use.
    fn invert_all(
        &self,
        z: &[f32],
        labels: &[i64],
        settings: &SampleSettings,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<f32>, RtError> {
        let per_z = self.model().noise_len();
        let (concurrent, threads) = with_graphs!(&self.loaded, g => (g.get(GraphKind::Cond)?[0].concurrent(), g.threads()));
        let workers = if concurrent { threads } else { 1 };
        let chunks = if self.batch == 0 { layout::split(labels.len(), workers) } else { layout::chunks(labels.len(), self.batch) };
        let work = |start: usize, n: usize, report: &mut dyn FnMut(Progress)| {
            let zs = &z[start * per_z..(start + n) * per_z];
            let ys = &labels[start..start + n];
            with_graphs!(&self.loaded, g => invert(g, zs, ys, settings, self.inversion(), cancel, report))
        };
        parallel::run_chunks(&chunks, workers, &work, progress)
    }

    /// Phase 2 alone: denoises images (B, C, H, W) with labels from t_max to t_min.
    pub fn denoise(&self, x: ArrayView4<f32>, labels: &[i64], progress: &mut dyn FnMut(Progress)) -> Result<Array4<f32>, RtError> {
        self.denoise_with(x, labels, &self.settings, progress)
    }

    /// [`Self::denoise`] with other settings than the builder's (its noise levels, steps and
    /// clipping; checked first; the batch stays the sampler's): phase 2 of one phase-1 result
    /// run with several step counts, as the quality ablations do.
    pub fn denoise_with(
        &self,
        x: ArrayView4<f32>,
        labels: &[i64],
        settings: &SampleSettings,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Array4<f32>, RtError> {
        self.denoise_cancellable(x, labels, settings, &Cancel::default(), progress)
    }

    /// [`Self::denoise_with`] that stops at its next denoising step with [`RtError::Cancelled`]
    /// once `cancel` is set, from any thread.
    pub fn denoise_cancellable(
        &self,
        x: ArrayView4<f32>,
        labels: &[i64],
        settings: &SampleSettings,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Array4<f32>, RtError> {
        let (x, bad) = self.denoise_until(x, labels, settings, cancel, progress)?;
        match bad.first() {
            Some(&i) => Err(RtError::NonFinite { index: i, attempts: 1 }),
            None => Ok(x),
        }
    }

    /// [`Self::denoise_with`] that returns images which came out NaN/Inf as they are, with their
    /// indices, instead of failing: for callers that redraw them (the quality ablations).
    pub fn denoise_keeping_non_finite(
        &self,
        x: ArrayView4<f32>,
        labels: &[i64],
        settings: &SampleSettings,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Array4<f32>, Vec<usize>), RtError> {
        self.denoise_until(x, labels, settings, &Cancel::default(), progress)
    }

    /// Phase 2 of `x`, stopped by `cancel`: the images and those that came out NaN/Inf.
    fn denoise_until(
        &self,
        x: ArrayView4<f32>,
        labels: &[i64],
        settings: &SampleSettings,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Array4<f32>, Vec<usize>), RtError> {
        let settings = SampleSettings { denoise_batch: self.settings.denoise_batch, ..*settings };
        validate(&settings, self.model().num_classes())?;
        let mut v: Vec<f32> = x.iter().copied().collect();
        if labels.len() != x.shape()[0] {
            return Err(RtError::Input(format!("{} labels for {} images", labels.len(), x.shape()[0])));
        }
        let c = &self.model().manifest.model;
        if x.shape()[1..] != [c.in_channels, c.img_size, c.img_size] {
            return Err(RtError::Input(format!(
                "images of {:?}; the model's are {}x{}x{}",
                &x.shape()[1..],
                c.in_channels,
                c.img_size,
                c.img_size
            )));
        }
        with_graphs!(&self.loaded, g => denoise(g, self.denoising(), &mut v, labels, &settings, cancel, progress))?;
        let bad = non_finite(&v, self.model().image_len());
        Ok((Array4::from_shape_vec(x.raw_dim(), v).map_err(|e| RtError::Internal(e.to_string()))?, bad))
    }

    /// What the sampler does with a NaN/Inf sample (the builder's [`OnNonFinite`]).
    pub fn on_non_finite(&self) -> OnNonFinite {
        self.on_non_finite
    }

    /// grad_x log p and log p of images (B, C, H, W) at noise levels `t` (B,) with labels.
    pub fn score(&self, x: ArrayView4<f32>, t: &[f32], labels: &[i64]) -> Result<(Array4<f32>, Array1<f32>), RtError> {
        let v: Vec<f32> = x.iter().copied().collect();
        let (s, lp) = with_graphs!(&self.loaded, g => score(g, self.score_form, &v, t, labels, self.settings.denoise_batch))?;
        let s = Array4::from_shape_vec(x.raw_dim(), s).map_err(|e| RtError::Input(e.to_string()))?;
        Ok((s, Array1::from(lp)))
    }

    /// log p(x | t, y) of images (B, C, H, W) through the per-layer forward graphs (no gradient).
    pub fn log_prob(&self, x: ArrayView4<f32>, t: &[f32], labels: &[i64]) -> Result<Array1<f32>, RtError> {
        let v: Vec<f32> = x.iter().copied().collect();
        let lp = with_graphs!(&self.loaded, g => log_prob(g, &v, t, labels, self.settings.denoise_batch))?;
        Ok(Array1::from(lp))
    }
}

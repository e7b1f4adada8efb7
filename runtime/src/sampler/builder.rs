//! [`SamplerBuilder`]: every setting of a [`Sampler`], starting at the package's defaults, checked
//! and turned into a sampler with its graphs loaded by [`SamplerBuilder::build`].

use std::sync::Arc;

use super::retry::OnNonFinite;
use super::{CfgStyle, SampleSettings, Sampler, ScoreForm, StepCache};
use crate::RtError;
use crate::graphs::Loaded;
use crate::memory;
use crate::model::Model;
use crate::provider::{Precision, Provider, ProviderOptions};

/// Classes of the images [`Sampler::sample`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classes {
    /// `n` images of classes drawn from the seed (unconditional for an unconditional model).
    Random(usize),
    /// One image per label (-1 = unconditional).
    Given(Vec<i64>),
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
    /// Bytes for the score evaluations on a CPU and on a GPU provider.
    memory_budget: Option<(usize, usize)>,
    score_form: ScoreForm,
    step_cache: Option<StepCache>,
    resident: Option<bool>,
}

impl SamplerBuilder {
    /// The package's defaults: tract, fp32, 16 random-class images, seed 0.
    pub(super) fn new(model: Arc<Model>) -> Self {
        let settings = super::defaults(&model);
        Self {
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
            resident: None,
        }
    }

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
        self.memory_budget = Some((bytes, bytes));
        self
    }
    /// [`Self::memory_budget`] by where the graphs run: `cpu` bytes of host memory on a CPU
    /// provider, `gpu` bytes of device memory on a GPU one (resolved once `Auto` has chosen).
    pub fn memory_budgets(mut self, cpu: usize, gpu: usize) -> Self {
        self.memory_budget = Some((cpu, gpu));
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
    /// KV cache of phase 1's step graphs when the phases do not run as loops (default: fixed
    /// for TensorRT, growing elsewhere).
    pub fn step_cache(mut self, c: StepCache) -> Self {
        self.step_cache = Some(c);
        self
    }
    /// Run phase 1 and phase 2 as loops of the fused graphs (the inversion steps and the
    /// denoising step hold their updates, so each run feeds the next): on a GPU the sampler's
    /// state stays in device buffers and the runs replay as CUDA graphs. Default: on for ONNX
    /// Runtime's CUDA and TensorRT when the package has these graphs (format 3), off elsewhere
    /// (on CPUs the step graphs with a growing cache do less work).
    pub fn resident(mut self, on: bool) -> Self {
        self.resident = Some(on);
        self
    }

    /// Checks the settings and loads the graphs on the provider (for `Auto`, the first that
    /// works; [`Sampler::skipped`] says why the others did not).
    pub fn build(self) -> Result<Sampler, RtError> {
        let c = &self.model.manifest.model;
        super::settings::validate(&self.settings, c.num_classes)?;
        let (given, n) = match &self.classes {
            Classes::Given(y) => (Some(y.clone()), y.len()),
            Classes::Random(n) => (None, *n),
        };
        let labels = itarflow_base::inputs::choose_labels(given, None, n, self.seed, c.num_classes, "the sampler's classes")?;
        let mut settings = self.settings;
        let (loaded, provider, skipped) = Loaded::open_auto(self.model.clone(), self.provider, self.precision, &self.options)?;
        if let Some((cpu, gpu)) = self.memory_budget {
            let budget = if provider.is_gpu() { gpu } else { cpu };
            settings.denoise_batch = memory::batch_for_budget(&self.model.manifest, self.score_form, budget);
        }
        let step_cache = self.step_cache.unwrap_or(if provider == Provider::TensorRt { StepCache::Fixed } else { StepCache::Growing });
        let has_loops = self.model.manifest.graphs.iter().any(|g| g.kind.is_loop());
        let resident = self.resident.unwrap_or(provider.device_resident() && has_loops);
        if resident && !has_loops {
            return Err(RtError::Package(format!(
                "{} has no loop graphs (fused inversion and denoising steps, package format 3): re-export it with this version of `itarflow export`, or sample with resident off",
                self.model.dir.display()
            )));
        }
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
            resident,
        })
    }
}

//! The graphs of a package on one provider, each family loaded (and optimised) on first use:
//! sampling needs the cond, step and score graphs, likelihood the forward graphs, the
//! layer-wise score the forward and VJP graphs.

use std::sync::{Arc, OnceLock};

use itarflow_base::manifest::{GraphEntry, GraphKind};

use crate::RtError;
use crate::model::Model;
use crate::provider::ort::{OrtDevice, OrtGraph, OrtLoad, trt_profiles};
use crate::provider::tract::{TractDevice, TractGraph};
use crate::provider::{CudaGraphs, Precision, Provider, ProviderOptions};

const KINDS: usize = GraphKind::ALL.len();

fn slot(kind: GraphKind) -> usize {
    GraphKind::ALL.iter().position(|&k| k == kind).expect("every kind has a slot")
}

type Loader<G> = Box<dyn Fn(&Model, &GraphEntry) -> Result<G, RtError> + Send + Sync>;

/// A package's graphs on one provider and precision, loaded family by family.
pub struct GraphSet<G> {
    model: Arc<Model>,
    precision: Precision,
    threads: usize,
    loader: Loader<G>,
    families: [OnceLock<Result<Vec<G>, String>>; KINDS],
}

impl<G> GraphSet<G> {
    pub fn new(model: Arc<Model>, precision: Precision, threads: usize, loader: Loader<G>) -> Self {
        Self { model, precision, threads: threads.max(1), loader, families: Default::default() }
    }

    /// CPU threads the graphs may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The manifest entry of the graph of `kind` (of layer `layer`) this set runs: its
    /// precision's, or under [`Precision::Mixed`] its phase's.
    pub fn entry(&self, kind: GraphKind, layer: Option<usize>) -> Result<&GraphEntry, RtError> {
        self.model.entry(kind, layer, self.precision.of(kind).name())
    }

    /// The graphs of `kind`: one per layer, or the single whole-model graph (score, denoising
    /// step).
    pub fn get(&self, kind: GraphKind) -> Result<&[G], RtError> {
        let family = self.families[slot(kind)].get_or_init(|| {
            let layers: Vec<Option<usize>> =
                if kind.per_layer() { (0..self.model.manifest.layers.len()).map(Some).collect() } else { vec![None] };
            layers
                .into_iter()
                .map(|l| {
                    let entry = self.entry(kind, l)?;
                    (self.loader)(&self.model, entry)
                })
                .collect::<Result<Vec<G>, RtError>>()
                .map_err(|e| e.to_string())
        });
        family.as_deref().map_err(|e| RtError::Load(e.clone()))
    }

    /// The whole-model score graph.
    pub fn score(&self) -> Result<&G, RtError> {
        Ok(&self.get(GraphKind::Score)?[0])
    }

    /// The whole-model denoising-step graph.
    pub fn denoise_step(&self) -> Result<&G, RtError> {
        Ok(&self.get(GraphKind::DenoiseStep)?[0])
    }
}

/// The ONNX Runtime device of a provider (with TensorRT profiles for `entry`'s inputs).
pub fn ort_device(provider: Provider, opts: &ProviderOptions, model: &Model, entry: &GraphEntry) -> OrtDevice {
    match provider {
        Provider::Cuda => OrtDevice::Cuda { tf32: opts.tf32 },
        Provider::TensorRt => {
            let tokens = entry.layer.map(|l| model.manifest.layers[l].tokens).unwrap_or(1);
            OrtDevice::TensorRt {
                fp16: opts.trt_fp16,
                cache_dir: opts.trt_cache.clone(),
                profiles: trt_profiles(&entry.inputs, tokens, opts.trt_max_batch),
            }
        }
        _ => OrtDevice::Cpu,
    }
}

/// Providers `auto` could not use, with the reason.
pub type Skipped = Vec<(Provider, String)>;

/// A package's graphs on a concrete provider.
pub enum Loaded {
    Tract(GraphSet<TractGraph>),
    Ort(GraphSet<OrtGraph>),
}

/// Runs `$body` with `$g` bound to the `GraphSet` of whichever engine `$loaded` holds.
#[macro_export]
macro_rules! with_graphs {
    ($loaded:expr, $g:ident => $body:expr) => {
        match $loaded {
            $crate::graphs::Loaded::Tract($g) => $body,
            $crate::graphs::Loaded::Ort($g) => $body,
        }
    };
}

impl Loaded {
    /// The graphs of `model` on `provider` (not `Auto`), checked by loading the first layer's
    /// cond graph, so that a provider that cannot run fails here with its reason.
    pub fn open(model: Arc<Model>, provider: Provider, precision: Precision, opts: &ProviderOptions) -> Result<Self, RtError> {
        let loaded = match provider {
            Provider::Tract | Provider::TractCuda => {
                let device = if provider == Provider::Tract { TractDevice::Cpu } else { TractDevice::Cuda };
                // A device that cannot run here fails now, with its reason, and so does a
                // TRACT_CPU_ISA that names no feature of this CPU, or an
                // ITARFLOW_TRACT_REWRITES that names no rewrite.
                device.runtime()?;
                crate::provider::tract::check_cpu_isa_setting().map_err(RtError::Setting)?;
                crate::provider::tract::check_rewrites_setting().map_err(RtError::Setting)?;
                let f16 = opts.tract_f16;
                Loaded::Tract(GraphSet::new(
                    model,
                    precision,
                    opts.threads(),
                    Box::new(move |m, e| {
                        let path = m.dir.join(&e.file);
                        // The manifest says which graphs are symbolic in the batch alone.
                        let batch_only = e.inputs.iter().flat_map(|i| &i.shape).all(|d| d.as_str().is_none_or(|s| s == "N"));
                        // Where the batch is: the first input dim that is N.
                        let batch = e
                            .inputs
                            .iter()
                            .enumerate()
                            .find_map(|(k, i)| i.shape.iter().position(|d| d.as_str() == Some("N")).map(|a| (k, a)));
                        match batch {
                            Some(batch) if batch_only => Ok(TractGraph::load_batched_with(&path, device, batch, f16)),
                            _ => TractGraph::load_with(&path, device, f16),
                        }
                    }),
                ))
            }
            Provider::Auto => return Err(RtError::Setting("resolve `auto` with Loaded::open_auto".into())),
            p => {
                if p == Provider::TensorRt {
                    std::fs::create_dir_all(&opts.trt_cache).map_err(|source| RtError::Io { path: opts.trt_cache.clone(), source })?;
                }
                let opts = opts.clone();
                let threads = opts.threads();
                Loaded::Ort(GraphSet::new(
                    model,
                    precision,
                    threads,
                    Box::new(move |m, e| {
                        // The graphs of whole batches get the threads; a step is too small to share.
                        let small = matches!(
                            e.kind,
                            GraphKind::Step
                                | GraphKind::StepFixed
                                | GraphKind::Cond
                                | GraphKind::Invert
                                | GraphKind::InvertGuided
                                | GraphKind::InvertGuidedStarflow
                        );
                        let load = OrtLoad {
                            device: ort_device(p, &opts, m, e),
                            library: opts.ort_lib.clone(),
                            threads: if small { 1 } else { threads },
                            cuda_graphs: if e.kind.is_loop() { opts.cuda_graphs } else { CudaGraphs::Off },
                            io_binding: opts.io_binding,
                            release_memory: matches!(e.kind, GraphKind::Forward | GraphKind::LayerVjp),
                        };
                        OrtGraph::load_with(&m.dir.join(&e.file), &load)
                    }),
                ))
            }
        };
        with_graphs!(&loaded, g => g.get(GraphKind::Cond).map(|_| ()))?;
        Ok(loaded)
    }

    /// `provider`, or for `Auto` the first of [`Provider::PREFERENCE`] that loads; returns the
    /// provider used and, for `Auto`, why each skipped one could not run.
    pub fn open_auto(
        model: Arc<Model>,
        provider: Provider,
        precision: Precision,
        opts: &ProviderOptions,
    ) -> Result<(Self, Provider, Skipped), RtError> {
        if provider != Provider::Auto {
            return Ok((Self::open(model, provider, precision, opts)?, provider, vec![]));
        }
        let mut skipped = Vec::new();
        for p in Provider::PREFERENCE {
            match Self::open(model.clone(), p, precision, opts) {
                Ok(l) => return Ok((l, p, skipped)),
                Err(e) => skipped.push((p, e.to_string())),
            }
        }
        Err(RtError::NoProvider(format!("{skipped:?}")))
    }

    pub fn model(&self) -> &Model {
        with_graphs!(self, g => g.model())
    }

    pub fn precision(&self) -> Precision {
        with_graphs!(self, g => g.precision())
    }
}

//! A loaded model package: its manifest (checked file by file against the recorded sha256), the
//! prior variance, and its graphs on a provider.

use std::path::{Path, PathBuf};

use itarflow_base::Npz;
use itarflow_base::manifest::{GraphKind, Manifest};

use crate::RtError;
use crate::provider::ort::{OrtDevice, OrtGraph};
use crate::provider::tract::TractGraph;

/// A model package on disk, validated.
#[derive(Debug, Clone)]
pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Prior variance of the last layer's tokens, (T, c) row-major.
    pub var: Vec<f32>,
}

impl Model {
    /// Reads and validates the package in `dir`: manifest format, every file's sha256, prior.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, RtError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        manifest.verify(&dir)?;
        let prior = Npz::read(dir.join(&manifest.prior_file))?;
        let last = manifest.layers.last().ok_or_else(|| RtError::Invalid("the manifest lists no layers".into()))?;
        let (shape, var) = prior.f32("var", 2, "(T, c)", "the prior variance")?;
        if shape != [last.tokens, last.token_dim] {
            return Err(RtError::Invalid(format!(
                "{}: prior variance has shape {shape:?}, the last layer's tokens are ({}, {})",
                dir.join(&manifest.prior_file).display(),
                last.tokens,
                last.token_dim
            )));
        }
        Ok(Self { dir, manifest, var })
    }

    /// The file of a graph, or an error naming what the package lacks.
    pub fn graph_path(&self, kind: GraphKind, layer: Option<usize>, precision: &str) -> Result<PathBuf, RtError> {
        let entry = self.manifest.graph(kind, layer, precision).ok_or_else(|| {
            RtError::Invalid(format!(
                "{} has no {precision} {kind:?} graph{}; re-export with --precision {precision} (or both)",
                self.dir.display(),
                layer.map(|l| format!(" for layer {l}")).unwrap_or_default()
            ))
        })?;
        Ok(self.dir.join(&entry.file))
    }

    fn graphs<G>(&self, precision: &str, load: impl Fn(&Path) -> Result<G, RtError>) -> Result<Graphs<G>, RtError> {
        let layers = self.manifest.layers.len();
        let get = |kind, layer| load(&self.graph_path(kind, layer, precision)?);
        Ok(Graphs {
            cond: (0..layers).map(|l| get(GraphKind::Cond, Some(l))).collect::<Result<_, _>>()?,
            step: (0..layers).map(|l| get(GraphKind::Step, Some(l))).collect::<Result<_, _>>()?,
            score: get(GraphKind::Score, None)?,
        })
    }

    /// Loads every graph the sampler needs on tract.
    pub fn tract_graphs(&self, precision: &str) -> Result<Graphs<TractGraph>, RtError> {
        self.graphs(precision, TractGraph::load)
    }

    /// Loads every graph the sampler needs on ONNX Runtime (`library`: libonnxruntime, else found).
    pub fn ort_graphs(&self, precision: &str, device: &OrtDevice, library: Option<&Path>) -> Result<Graphs<OrtGraph>, RtError> {
        self.graphs(precision, |p| OrtGraph::load(p, device, library))
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.model.num_classes
    }
}

/// The graphs the two-phase sampler runs.
pub struct Graphs<G> {
    pub cond: Vec<G>,
    pub step: Vec<G>,
    pub score: G,
}

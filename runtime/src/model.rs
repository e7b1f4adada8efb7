//! A loaded model package: its manifest (checked file by file against the recorded sha256), the
//! prior variance, and its graphs on a provider.

use std::path::{Path, PathBuf};

use itarflow_base::Npz;
use itarflow_base::manifest::{GraphEntry, GraphKind, Manifest};

use crate::RtError;

/// A model package on disk, validated.
#[derive(Debug, Clone)]
pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Prior variance of the last layer's tokens, (T, c) row-major.
    pub var: Vec<f32>,
}

/// The suffixes of the three models `itarflow-rt serve` makes of a package it serves as `NAME`:
/// sampling (`NAME`), score (`NAME-score`) and denoising (`NAME-denoise`), in that order.
pub const SERVED_MODEL_SUFFIXES: [&str; 3] = ["", "-score", "-denoise"];

impl Model {
    /// Reads and validates the package in `dir`: manifest format, every file's sha256, prior.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, RtError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        manifest.verify(&dir)?;
        let prior = Npz::read(dir.join(&manifest.prior_file))?;
        let last = manifest.layers.last().ok_or_else(|| RtError::Package("the manifest lists no layers".into()))?;
        let (shape, var) = prior.f32("var", 2, "(T, c)", "the prior variance")?;
        if shape != [last.tokens, last.token_dim] {
            return Err(RtError::Package(format!(
                "{}: prior variance has shape {shape:?}, the last layer's tokens are ({}, {})",
                dir.join(&manifest.prior_file).display(),
                last.tokens,
                last.token_dim
            )));
        }
        Ok(Self { dir, manifest, var })
    }

    /// The manifest entry of a graph, or an error naming what the package lacks.
    pub fn entry(&self, kind: GraphKind, layer: Option<usize>, precision: &str) -> Result<&GraphEntry, RtError> {
        self.manifest.graph(kind, layer, precision).ok_or_else(|| {
            RtError::Package(format!(
                "{} has no {precision} {kind:?} graph{}; re-export it with this version of `itarflow export` (--precision {precision} or both)",
                self.dir.display(),
                layer.map(|l| format!(" for layer {l}")).unwrap_or_default()
            ))
        })
    }

    /// The name it goes by (a server's sampling model, without `--name`): its folder's, or the
    /// parent folder's for a folder called `package` (the demo's models/fmnist/package is
    /// `fmnist`).
    pub fn default_name(&self) -> String {
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let folder = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        match folder(&dir) {
            Some(n) if n == "package" => dir.parent().and_then(folder).unwrap_or(n),
            Some(n) => n,
            None => "itarflow".into(),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.model.num_classes
    }

    /// Values of one image (C H W).
    pub fn image_len(&self) -> usize {
        let c = &self.manifest.model;
        c.in_channels * c.img_size * c.img_size
    }

    /// Values of one image's prior noise (T c of the last layer).
    pub fn noise_len(&self) -> usize {
        let last = self.manifest.layers.last().expect("validated");
        last.tokens * last.token_dim
    }
}

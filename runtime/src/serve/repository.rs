//! Triton's model repository extension: the index (REST `POST /v2/repository/index`, gRPC
//! `RepositoryIndex`; Triton clients' `get_model_repository_index`) lists the models served, and
//! on a server with a model repository (`--model-repository DIR`) those it could load; load and
//! unload (`load_model`, `unload_model`) serve a package of the repository, or stop serving it,
//! while the server runs. A server of one package (`--model`) refuses them with
//! [`NO_MODEL_CONTROL`].
//!
//! A repository is a folder of packages, one sub-folder each, named as its sampling model is:
//! `DIR/NAME/manifest.json`, or `DIR/NAME/package/manifest.json` (the layout of `models/`, whose
//! demo serves as `fmnist`). Loading a package of any of its three model names loads it; a load
//! answers once the package is warmed up (its graphs loaded and one image sampled), and a load of
//! a package served already loads it again (the new one replaces it once warmed up, the old one
//! serving meanwhile). Unloading lets requests in flight finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::models::Kind;
use super::package::{Package, PackageState};
use super::protocol::Refusal;
use super::state::AppState;
use crate::RtError;

/// Why a load or unload request is refused by a server of one package.
pub const NO_MODEL_CONTROL: &str = "this server serves one package (--model) for its whole life: models are loaded and \
     unloaded by a server started with --model-repository DIR (a folder of packages)";

/// A model of the index (Triton's `RepositoryIndexResponse.ModelIndex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: &'static str,
    /// `READY`, `LOADING` (warming up) or `UNAVAILABLE` (not loaded, warming up failed, or
    /// shutting down).
    pub state: &'static str,
    /// Why it is not ready (empty when it is).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The package folder of `name` in the repository at `dir`, if there is one.
fn package_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(name).join("package")].into_iter().find(|d| d.join("manifest.json").is_file())
}

/// The packages of the repository at `dir`: their names and folders, by name.
pub fn scan(dir: &Path) -> Result<Vec<(String, PathBuf)>, RtError> {
    let io = |source| RtError::Io { path: dir.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        if valid_name(&name)
            && let Some(d) = package_dir(dir, &name)
        {
            found.push((name, d));
        }
    }
    found.sort();
    Ok(found)
}

/// A package name a request may give: a folder name, not a path.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The server's models and their state, and the repository's packages not loaded; with
/// `ready_only`, the models ready.
pub fn index(s: &AppState, ready_only: bool) -> Vec<IndexEntry> {
    let mut entries = Vec::new();
    let loaded = s.packages();
    for p in &loaded {
        let (state, reason) = match p.state() {
            _ if s.is_shutting_down() => ("UNAVAILABLE", "the server is shutting down".to_string()),
            PackageState::Ready => ("READY", String::new()),
            PackageState::Loading => ("LOADING", "loading the graphs and sampling a first image".to_string()),
            PackageState::Failed(why) => ("UNAVAILABLE", why),
        };
        entries.extend(p.model_names().into_iter().map(|name| IndexEntry { name, version: "1", state, reason: reason.clone() }));
    }
    if let Some(repo) = &s.repository {
        for (name, _) in scan(&repo.dir).unwrap_or_default() {
            if !loaded.iter().any(|p| p.name == name) {
                let unloaded =
                    |k: &Kind| IndexEntry { name: k.model_name(&name), version: "1", state: "UNAVAILABLE", reason: "unloaded".into() };
                entries.extend(Kind::ALL.iter().map(unloaded));
            }
        }
    }
    entries.retain(|e| !ready_only || e.state == "READY");
    entries
}

/// The package of the repository that `model` names (the package's name, or one of its
/// models'), and its folder.
fn resolve(dir: &Path, model: &str) -> Result<(String, PathBuf), Refusal> {
    if !valid_name(model) {
        return Err(Refusal::bad(format!("'{model}' is not a model name (letters, digits, '.', '_' and '-'; not a path)")));
    }
    let base = [Some(model), model.strip_suffix("-score"), model.strip_suffix("-denoise")];
    base.into_iter().flatten().find_map(|name| package_dir(dir, name).map(|d| (name.to_string(), d))).ok_or_else(|| {
        Refusal::bad(format!(
            "no package {model} in the model repository {}: a package is a folder NAME with manifest.json, or NAME/package/manifest.json",
            dir.display()
        ))
    })
}

/// Refuses a load that carries parameters (Triton's `config` override, or `file:` contents): the
/// package is loaded as its folder holds it.
pub fn no_load_parameters<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<(), Refusal> {
    let keys: Vec<&str> = keys.into_iter().collect();
    if keys.is_empty() {
        return Ok(());
    }
    Err(Refusal::bad(format!(
        "load parameters {keys:?} are not supported: a package is loaded as its folder in the repository holds it (its \
         configuration is its manifest's and the server's flags); put the package in the folder and load it by name"
    )))
}

/// Serves the repository's package that `model` names (again, if it is served: replaced once
/// the new one is warmed up); answers once it is ready.
pub async fn load(s: &Arc<AppState>, model: &str) -> Result<(), Refusal> {
    let repo = s.repository.as_ref().ok_or_else(|| Refusal::bad(NO_MODEL_CONTROL))?;
    if s.is_shutting_down() {
        return Err(Refusal { status: 503, message: "the server is shutting down".into() });
    }
    let (name, dir) = resolve(&repo.dir, model)?;
    let _one_at_a_time = repo.changing.lock().await;
    tracing::info!(package = %name, dir = %dir.display(), "loading");
    let state = s.clone();
    let opened = tokio::task::spawn_blocking(move || state.repository.as_ref().map(|r| (r.open)(&dir)))
        .await
        .map_err(|e| Refusal { status: 500, message: format!("loading {name} panicked: {e}") })?;
    let sampler = match opened {
        Some(Ok(sampler)) => sampler,
        Some(Err(e)) => return Err(Refusal::bad(format!("loading {name}: {e}"))),
        None => return Err(Refusal::bad(NO_MODEL_CONTROL)),
    };
    let package = Package::start(name.clone(), Arc::new(sampler), s.batch, s.pad_auto, s.observers());
    let warming = package.clone();
    tokio::task::spawn_blocking(move || warming.warm_up())
        .await
        .map_err(|e| Refusal { status: 500, message: format!("warming up {name} panicked: {e}") })?
        .map_err(Refusal::bad)?;
    s.insert(package);
    tracing::info!(package = %name, "loaded");
    Ok(())
}

/// Stops serving the package that `model` names (requests in flight finish).
pub async fn unload(s: &Arc<AppState>, model: &str) -> Result<(), Refusal> {
    let repo = s.repository.as_ref().ok_or_else(|| Refusal::bad(NO_MODEL_CONTROL))?;
    let _one_at_a_time = repo.changing.lock().await;
    let name = match s.find(model) {
        Some((p, _)) => p.name.clone(),
        None => return Err(Refusal::bad(format!("model {model} is not loaded (loaded: {:?})", s.model_names()))),
    };
    s.remove(&name);
    tracing::info!(package = %name, "unloaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_folder_names_and_resolve_to_their_package() {
        for bad in ["", ".", "..", ".hidden", "a/b", "../a", "a\\b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["fmnist", "a.b", "s64_v2", "x-1"] {
            assert!(valid_name(good), "{good:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for folder in ["plain", "nested/package", "notes"] {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
        }
        std::fs::write(dir.join("plain/manifest.json"), b"{}").unwrap();
        std::fs::write(dir.join("nested/package/manifest.json"), b"{}").unwrap();
        let names: Vec<String> = scan(dir).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["nested", "plain"], "folders without a manifest are not packages");
        assert_eq!(resolve(dir, "plain-score").unwrap(), ("plain".to_string(), dir.join("plain")));
        assert_eq!(resolve(dir, "nested-denoise").unwrap(), ("nested".to_string(), dir.join("nested/package")));
        assert_eq!(resolve(dir, "nested").unwrap().0, "nested");
        assert!(resolve(dir, "notes").unwrap_err().message.contains("manifest.json"));
        assert!(resolve(dir, "plain-score-score").is_err());
        assert!(resolve(dir, "../plain").unwrap_err().message.contains("not a path"));
    }
}

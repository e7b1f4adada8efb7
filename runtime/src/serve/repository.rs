//! Triton's model repository extension, as far as a server of one package has it: the index
//! (REST `POST /v2/repository/index`, gRPC `RepositoryIndex`; Triton clients'
//! `get_model_repository_index`) lists the three models with their state. Loading and unloading
//! are refused with [`NO_MODEL_CONTROL`]: the models are the package's for the server's life.

use serde::Serialize;

use super::models::Kind;
use super::state::AppState;

/// Why a load or unload request is refused.
pub const NO_MODEL_CONTROL: &str = "itarflow-rt serves the models of one package for its whole life: models are not loaded \
     or unloaded through the repository (start another server, `itarflow-rt serve --model PACKAGE`, for another package)";

/// A model of the index (Triton's `RepositoryIndexResponse.ModelIndex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: &'static str,
    /// `READY`, `LOADING` (warming up) or `UNAVAILABLE` (warming up failed, or shutting down).
    pub state: &'static str,
    /// Why it is not ready (empty when it is).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The server's models and their state; with `ready_only`, those ready.
pub fn index(s: &AppState, ready_only: bool) -> Vec<IndexEntry> {
    let (state, reason) = if s.is_ready() {
        ("READY", String::new())
    } else if s.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
        ("UNAVAILABLE", "the server is shutting down".to_string())
    } else if let Some(failed) = s.warm_up_failed.get() {
        ("UNAVAILABLE", failed.clone())
    } else {
        ("LOADING", "loading the graphs and sampling a first image".to_string())
    };
    if ready_only && state != "READY" {
        return Vec::new();
    }
    Kind::ALL.iter().map(|k| IndexEntry { name: k.model_name(&s.name), version: "1", state, reason: reason.clone() }).collect()
}

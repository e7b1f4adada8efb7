//! Training checkpoints: `DIR/checkpoint/` holds the model and optimizer state (Burn records,
//! which keep the parameter ids the optimizer state is keyed by), the EMA weights and
//! `state.json` (step, config, counters). It is written to `checkpoint.tmp/` and swapped in by
//! renames, so a run killed at any moment leaves the previous checkpoint readable.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{TrainConfig, TrainError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    pub config: TrainConfig,
    /// Wall time spent training so far, across resumptions.
    pub elapsed_seconds: f64,
    /// Steps skipped because the loss was not finite.
    pub skipped_steps: u64,
}

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const EMA_FILE: &str = "ema.safetensors";
pub const STATE_FILE: &str = "state.json";

fn err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::State { path: path.into(), reason: reason.to_string() }
}

/// The checkpoint directory of a run, recovering from a swap interrupted between its renames.
pub fn checkpoint_dir(run: &Path) -> Result<PathBuf, TrainError> {
    let dir = run.join(CHECKPOINT_DIR);
    let old = run.join("checkpoint.old");
    if !dir.exists() && old.exists() {
        fs::rename(&old, &dir).map_err(|e| err(&old, e))?;
    }
    if !dir.join(STATE_FILE).exists() {
        return Err(err(&dir, format!("no {STATE_FILE}: not a training run directory, or it never reached a checkpoint")));
    }
    Ok(dir)
}

/// Reads `state.json` of a run.
pub fn read_state(run: &Path) -> Result<TrainState, TrainError> {
    let path = checkpoint_dir(run)?.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| err(&path, format!("corrupt: {e}")))
}

/// Writes a checkpoint: `fill` writes the files into the given temporary directory.
pub fn write_checkpoint(run: &Path, state: &TrainState, fill: impl FnOnce(&Path) -> Result<(), TrainError>) -> Result<(), TrainError> {
    let tmp = run.join("checkpoint.tmp");
    let dir = run.join(CHECKPOINT_DIR);
    let old = run.join("checkpoint.old");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    fill(&tmp)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| err(&tmp, e))?;
    fs::write(tmp.join(STATE_FILE), json).map_err(|e| err(&tmp, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
    }
    if dir.exists() {
        fs::rename(&dir, &old).map_err(|e| err(&dir, e))?;
    }
    fs::rename(&tmp, &dir).map_err(|e| err(&tmp, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
    }
    Ok(())
}

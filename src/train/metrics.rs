//! The metrics log: one JSON object per line (`metrics.jsonl`), each with a `step`. On resume,
//! lines past the checkpoint's step are dropped so the log reads as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, keeping only lines with step <= `keep_through` (all when None).
    pub fn open(path: &Path, keep_through: Option<u64>) -> std::io::Result<Self> {
        if let Some(limit) = keep_through
            && path.exists()
        {
            let kept: Vec<String> = BufReader::new(File::open(path)?)
                .lines()
                .map_while(Result::ok)
                .filter(|line| {
                    serde_json::from_str::<Value>(line).ok().and_then(|v| v.get("step").and_then(Value::as_u64)).is_some_and(|s| s <= limit)
                })
                .collect();
            itarflow_base::write_atomic(path, |w| kept.iter().try_for_each(|l| writeln!(w, "{l}")))?;
        } else if keep_through.is_none() && path.exists() {
            std::fs::remove_file(path)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.into(), file })
    }

    pub fn write(&mut self, record: &Value) -> std::io::Result<()> {
        writeln!(self.file, "{record}")?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a metrics log.
pub fn read(path: &Path) -> std::io::Result<Vec<Value>> {
    Ok(BufReader::new(File::open(path)?).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect())
}

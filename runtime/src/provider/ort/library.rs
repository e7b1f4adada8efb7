//! Where ONNX Runtime's library is, and the process-wide environment made from it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use super::fail;
use crate::RtError;

/// Where libonnxruntime is: `explicit`, else `ORT_DYLIB_PATH`, else the `onnxruntime` Python
/// package's `capi/` directory.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RtError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let python =
        std::process::Command::new("python3").args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"]).output();
    if let Ok(out) = python
        && out.status.success()
    {
        let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
        if let Ok(entries) = std::fs::read_dir(&capi) {
            let mut libs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            if let Some(lib) = libs.into_iter().next() {
                return Ok(lib);
            }
        }
    }
    Err(fail(
        "onnxruntime",
        "the ONNX Runtime library was not found: set ORT_DYLIB_PATH to libonnxruntime.so, or install it with \
         `pip install onnxruntime==1.31.1` (CPU) or `pip install onnxruntime-gpu==1.31.1` (CUDA and TensorRT; \
         TensorRT also needs libnvinfer 10 from NVIDIA's index)",
    ))
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (ort's one global), loaded on first use.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment, RtError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = find_library(library).map_err(|e| e.to_string())?;
        if !path.exists() {
            return Err(format!("ONNX Runtime library {} does not exist (from ORT_DYLIB_PATH or --ort-lib)", path.display()));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("itarflow-rt")
            .build()
            .map_err(|e| format!("cannot create the environment: {e}"))
    });
    env.as_ref().map_err(|e| fail("onnxruntime", e))
}

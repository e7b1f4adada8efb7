//! The ONNX Runtime provider (CPU, CUDA, TensorRT), through `ort` with `load-dynamic`: the
//! library is loaded at run time from an explicit path, `ORT_DYLIB_PATH`, or the `onnxruntime`
//! Python package, so nothing is downloaded at build time. A requested CUDA or TensorRT provider
//! that cannot register is an error carrying ONNX Runtime's reason, never a silent CPU fallback.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use super::{Engine, HostTensor};
use crate::RtError;

/// The ONNX Runtime devices.
#[derive(Debug, Clone, PartialEq)]
pub enum OrtDevice {
    Cpu,
    Cuda,
    TensorRt {
        fp16: bool,
        /// Engines (and the timing cache) are built once and reused from here.
        cache_dir: PathBuf,
        /// Optimisation profile of the graph's dynamic inputs (see [`trt_profiles`]).
        profiles: Option<TrtProfiles>,
    },
}

/// TensorRT optimisation profile shapes, in ONNX Runtime's `name:AxBxC,name:...` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtProfiles {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// The optimisation profile of a graph whose inputs are `inputs` (from the manifest): the batch
/// symbol "N" spans 1..=`max_batch` (optimised for `max_batch`), the cached-token symbol "P"
/// spans 0..=`tokens` - 1 (optimised for the middle), numbers stay. None when every input is
/// static.
pub fn trt_profiles(inputs: &[itarflow_base::manifest::TensorSpec], tokens: usize, max_batch: usize) -> Option<TrtProfiles> {
    let dim = |d: &serde_json::Value, which: usize| -> usize {
        match (d.as_u64(), d.as_str()) {
            (Some(n), _) => n as usize,
            (_, Some("P")) => [0, tokens / 2, tokens.saturating_sub(1)][which],
            (_, _) => [1, max_batch, max_batch][which],
        }
    };
    let dynamic: Vec<_> = inputs.iter().filter(|i| i.shape.iter().any(|d| d.is_string())).collect();
    if dynamic.is_empty() {
        return None;
    }
    let shapes = |which: usize| {
        dynamic
            .iter()
            .map(|i| format!("{}:{}", i.name, i.shape.iter().map(|d| dim(d, which).to_string()).collect::<Vec<_>>().join("x")))
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(TrtProfiles { min: shapes(0), opt: shapes(1), max: shapes(2) })
}

impl OrtDevice {
    pub fn name(&self) -> &'static str {
        match self {
            OrtDevice::Cpu => "cpu",
            OrtDevice::Cuda => "cuda",
            OrtDevice::TensorRt { .. } => "tensorrt",
        }
    }
}

fn fail(provider: &str, reason: impl std::fmt::Display) -> RtError {
    RtError::Provider { provider: provider.into(), reason: reason.to_string() }
}

/// Where libonnxruntime is: `explicit`, else `ORT_DYLIB_PATH`, else the `onnxruntime` Python
/// package's `capi/` directory.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RtError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let python = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output();
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

/// A graph in an ONNX Runtime session.
pub struct OrtGraph {
    session: Mutex<Session>,
    outputs: Vec<String>,
    inputs: Vec<String>,
    provider: &'static str,
}

impl OrtGraph {
    /// Creates a session for the graph at `path` on `device` (strict provider registration).
    pub fn load(path: &Path, device: &OrtDevice, library: Option<&Path>) -> Result<Self, RtError> {
        Self::load_with_threads(path, device, library, 1)
    }

    /// As [`Self::load`], with `threads` intra-op threads. Above one, the session's pool does not
    /// spin between runs: the sampler holds some thirty sessions, and spinning pools of idle
    /// sessions would take the cores from the one running.
    pub fn load_with_threads(path: &Path, device: &OrtDevice, library: Option<&Path>, threads: usize) -> Result<Self, RtError> {
        let env = environment(library)?;
        let p = device.name();
        let ep = match device {
            OrtDevice::Cpu => ort::ep::CPU::default().build(),
            OrtDevice::Cuda => ort::ep::CUDA::default().build(),
            OrtDevice::TensorRt { fp16, cache_dir, profiles } => {
                let mut trt = ort::ep::TensorRT::default()
                    .with_fp16(*fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(cache_dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(cache_dir.display());
                if let Some(p) = profiles {
                    trt = trt
                        .with_profile_min_shapes(&p.min)
                        .with_profile_opt_shapes(&p.opt)
                        .with_profile_max_shapes(&p.max);
                }
                trt.build()
            }
        }
        .error_on_failure();
        let session = Session::builder(env)
            .map_err(|e| fail(p, e))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| fail(p, e))?
            .with_intra_op_spinning(threads <= 1)
            .map_err(|e| fail(p, e))?
            .with_execution_providers([ep])
            .map_err(|e| fail(p, e))?
            .commit_from_file(path)
            .map_err(|e| fail(p, format!("{}: {e}", path.display())))?;
        let inputs = session.inputs().iter().map(|i| i.name().to_string()).collect();
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Self { session: Mutex::new(session), outputs, inputs, provider: p })
    }
}

impl Engine for OrtGraph {
    type Value = DynValue;

    fn upload(&self, t: &HostTensor) -> Result<DynValue, RtError> {
        let v = match t {
            HostTensor::F32(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
            HostTensor::I64(s, d) => Tensor::from_array((s.clone(), d.clone())).map(|t| t.into_dyn()),
        };
        v.map_err(|e| fail(self.provider, e))
    }

    fn download(&self, v: &DynValue) -> Result<HostTensor, RtError> {
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| fail(self.provider, e))?;
        Ok(HostTensor::F32(shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }

    fn run_values(&self, inputs: Vec<&DynValue>) -> Result<Vec<DynValue>, RtError> {
        let mut session = self.session.lock().map_err(|_| fail(self.provider, "session lock poisoned"))?;
        let feeds: Vec<(&str, &DynValue)> = self.inputs.iter().map(String::as_str).zip(inputs).collect();
        let mut out = session.run(feeds).map_err(|e| fail(self.provider, e))?;
        self.outputs
            .iter()
            .map(|name| out.remove(name.as_str()).ok_or_else(|| fail(self.provider, format!("no output {name}"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use itarflow_base::manifest::TensorSpec;
    use serde_json::json;

    #[test]
    fn profiles_cover_the_batch_and_past_length_and_skip_static_inputs() {
        let spec = |name: &str, shape: Vec<serde_json::Value>| TensorSpec { name: name.into(), dtype: "float32".into(), shape };
        let inputs = [
            spec("token", vec![json!("N"), json!(16)]),
            spec("pos", vec![]),
            spec("past_k0", vec![json!("N"), json!(2), json!("P"), json!(64)]),
        ];
        let p = trt_profiles(&inputs, 49, 32).unwrap();
        assert_eq!(p.min, "token:1x16,past_k0:1x2x0x64");
        assert_eq!(p.opt, "token:32x16,past_k0:32x2x24x64");
        assert_eq!(p.max, "token:32x16,past_k0:32x2x48x64");
        assert_eq!(trt_profiles(&inputs[1..2], 49, 32), None);
    }
}

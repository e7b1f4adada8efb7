//! The TensorRT execution provider: fp16 engines, engine and timing caches, optimisation
//! profiles from the manifest's dims, and its own CUDA graphs.

use std::path::Path;

use ort::ep::ExecutionProviderDispatch;

/// TensorRT optimisation profile shapes, in ONNX Runtime's `name:AxBxC,name:...` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtProfiles {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// The optimisation profile of a graph whose inputs are `inputs` (from the manifest): the batch
/// symbol "N" spans 1..=`max_batch` (optimised for `max_batch`), the cached-token symbol "P"
/// spans 0..=`tokens` - 1 (optimised for the middle), the denoising levels "K" 2..=1001
/// (optimised for 11: ten steps), numbers stay. None when every input is static.
pub fn trt_profiles(inputs: &[itarflow_base::manifest::TensorSpec], tokens: usize, max_batch: usize) -> Option<TrtProfiles> {
    let dim = |d: &serde_json::Value, which: usize| -> usize {
        match (d.as_u64(), d.as_str()) {
            (Some(n), _) => n as usize,
            (_, Some("P")) => [0, tokens / 2, tokens.saturating_sub(1)][which],
            (_, Some("K")) => [2, 11, 1001][which],
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

/// TensorRT with `fp16` engines cached in `cache_dir` (with the timing cache), the graph's
/// optimisation `profiles`, and TensorRT's CUDA graphs if `cuda_graph`.
pub(super) fn execution_provider(
    fp16: bool,
    cache_dir: &Path,
    profiles: Option<&TrtProfiles>,
    cuda_graph: bool,
) -> ExecutionProviderDispatch {
    let mut trt = ort::ep::TensorRT::default()
        .with_fp16(fp16)
        .with_engine_cache(true)
        .with_engine_cache_path(cache_dir.display())
        .with_timing_cache(true)
        .with_timing_cache_path(cache_dir.display())
        .with_cuda_graph(cuda_graph);
    if let Some(p) = profiles {
        trt = trt.with_profile_min_shapes(&p.min).with_profile_opt_shapes(&p.opt).with_profile_max_shapes(&p.max);
    }
    trt.build()
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
        let levels = [spec("levels", vec![json!("N"), json!("K")]), spec("x", vec![json!("N"), json!(1), json!(28), json!(28)])];
        let p = trt_profiles(&levels, 1, 256).unwrap();
        assert_eq!(p.min, "levels:1x2,x:1x1x28x28");
        assert_eq!(p.opt, "levels:256x11,x:256x1x28x28");
        assert_eq!(p.max, "levels:256x1001,x:256x1x28x28");
    }
}

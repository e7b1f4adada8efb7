//! The tract provider: pure-Rust CPU inference. Graphs whose symbolic dims are the batch N and
//! at most the past length P (cond, forward, step, VJP, score) get one optimised plan per batch
//! size they run with, made from the file on first use (N made concrete: tract then fuses and
//! vectorises the elementwise ops it leaves generic under a symbol, 1.7x faster on the score
//! graph; P stays symbolic, it changes every step). Before optimisation, the plan's model goes
//! through the load-time rewrites of [`rewrite_for_cpu`] (`rewrites.rs`: attention over a KV
//! cache, masked softmaxes, the fixed cache's writes, LayerNorm and the adjoints of LayerNorm and
//! GELU, and on x86-64 CPUs with AVX-512F or AVX2 and FMA the matrix products, each as an op of
//! this module that tract would otherwise run slower, found by `pattern.rs`'s readings of the
//! graph; `ITARFLOW_TRACT_REWRITES` selects them, `TRACT_CPU_ISA` edits the instruction sets
//! both tract and these ops use, `isa.rs`). On CPUs without fp16 arithmetic an fp16 graph's
//! plan computes in fp32 ([`F16Compute`], `upcast.rs`).
//! Values stay tract tensors between steps, so a step's present K/V feed the next step as they are.
//! Run states (tract's per-run scratch) are pooled and reused across runs: a generation's T - 1
//! steps share one state instead of allocating one per step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::{DefaultRuntime, Runnable, Runtime, State};

use super::{Engine, HostTensor};
use crate::RtError;

mod attention;
mod broadcast;
mod gelu_grad;
mod gemm;
mod isa;
mod lanes;
mod layer_norm;
mod linear;
mod matmul;
mod pattern;
mod rewrites;
mod scatter;
mod softmax;
mod upcast;
pub use attention::{KvAttention, fuse_kv_attention};
pub use broadcast::{Arith, BroadcastBinary, speed_up_broadcasts};
pub use gelu_grad::{GeluGrad, fuse_gelu_grads};
pub use gemm::{Kernel as MatrixKernel, kernel as matrix_kernel};
pub use isa::{check_setting as check_cpu_isa_setting, describe as cpu_kernels};
pub use layer_norm::{LayerNormGrad, LayerNormRows, fuse_layer_norm_grads, fuse_layer_norms};
pub use linear::{ConstLinear, fuse_const_linears};
pub use matmul::{BatchedMatMul, fuse_batched_matmuls};
pub use rewrites::{Rewrites, check_setting as check_rewrites_setting, rewrite_for_cpu};
pub use scatter::{FastScatter, speed_up_scatters};
pub use softmax::{RowSoftmax, rewrite_softmaxes};
pub use upcast::F16Compute;

/// Replaces the value at `old` in `model` by what `wire` builds in a patch from `inputs` (tapped
/// from `model`), once its fact is checked to be `old`'s: the last step of every rewrite here.
fn substitute(
    model: &mut TypedModel,
    old: OutletId,
    inputs: &[OutletId],
    wire: impl FnOnce(&mut TypedModelPatch, &[OutletId]) -> TractResult<OutletId>,
) -> TractResult<()> {
    substitute_outputs(model, &[(old, 0)], inputs, |patch, taps| Ok(tvec!(wire(patch, taps)?)))
}

/// [`substitute`] for a replacement of several outputs: each `(old, k)` of `olds` is replaced
/// by output `k` of what `wire` builds, each fact checked.
fn substitute_outputs(
    model: &mut TypedModel,
    olds: &[(OutletId, usize)],
    inputs: &[OutletId],
    wire: impl FnOnce(&mut TypedModelPatch, &[OutletId]) -> TractResult<TVec<OutletId>>,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let taps = inputs.iter().map(|&o| patch.tap_model(model, o)).collect::<TractResult<TVec<_>>>()?;
    let news = wire(&mut patch, &taps)?;
    for &(old, k) in olds {
        let new = *news.get(k).ok_or_else(|| TractError::msg("the replacement has fewer outputs than are replaced"))?;
        let (got, want) = (patch.outlet_fact(new)?.clone(), model.outlet_fact(old)?.without_value());
        tract_onnx::tract_core::internal::ensure!(
            got == want,
            "rewriting {}: the replacement gives {got:?} where the graph has {want:?}",
            model.node(old.node).name
        );
        patch.shunt_outside(model, old, new)?;
    }
    patch.apply(model)
}

/// An f32 tensor of `shape` whose values `fill` writes, every one of them (the fused ops'
/// outputs, allocated without zeroing).
fn filled(shape: &[usize], fill: impl FnOnce(&mut [f32]) -> TractResult<()>) -> TractResult<TValue> {
    // SAFETY: `fill` writes every value before the tensor is read (each caller's loops cover
    // the whole slice).
    let mut t = unsafe { Tensor::uninitialized::<f32>(shape)? };
    fill(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
    Ok(t.into_tvalue())
}

/// Row-major strides of `shape`, in elements (tract's own, as unsigned offsets).
fn strides(shape: &[usize]) -> TVec<usize> {
    natural_strides(shape).iter().map(|&s| s as usize).collect()
}

/// Deterministic test values in (-1.2, 1.3), different for each seed.
#[cfg(test)]
fn test_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 7919 % 1009) as f32) / 400.0 - 1.2).collect()
}

/// `model` optimised and run by tract on `inputs` (shape, f32 values): its first output.
#[cfg(test)]
fn test_run(model: TypedModel, inputs: &[(Vec<usize>, Vec<f32>)]) -> Vec<f32> {
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let feeds = inputs.iter().map(|(s, x)| Tensor::from_shape(s, x).unwrap().into_tvalue()).collect();
    let out = plan.run(feeds).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

/// Asserts `got` equals `want` value by value within `tol` relative (1 absolute below 1).
#[cfg(test)]
fn test_assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what} at {i}: {g} vs {w}");
    }
}

/// Batch sizes with a plan of their own, at most (each holds its own packed weights).
const MAX_BATCH_PLANS: usize = 4;

fn fail(what: &str, e: impl std::fmt::Debug) -> RtError {
    RtError::Provider { provider: "tract".into(), reason: format!("{what}: {e:?}") }
}

/// Where tract runs a graph: its CPU runtime, or tract-cuda's (kernels compiled at run time
/// with NVRTC; CUDA, cuBLAS, cuDNN and NVRTC loaded from the host, nothing to install).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TractDevice {
    Cpu,
    Cuda,
}

impl TractDevice {
    pub fn name(self) -> &'static str {
        match self {
            TractDevice::Cpu => "tract",
            TractDevice::Cuda => "tract-cuda",
        }
    }

    /// `e` as this device's error (the provider's name in it).
    fn own(self, e: RtError) -> RtError {
        match e {
            RtError::Provider { reason, .. } => RtError::Provider { provider: self.name().into(), reason },
            other => other,
        }
    }

    /// tract's runtime for this device, or why it cannot run here.
    pub fn runtime(self) -> Result<&'static dyn Runtime, RtError> {
        match self {
            TractDevice::Cpu => Ok(&DefaultRuntime),
            TractDevice::Cuda => cuda_runtime(),
        }
    }
}

/// Whether tract computes fp16 graphs in hardware on this CPU (aarch64 with FP16 arithmetic);
/// elsewhere it converts every fp16 value on the way in and out of its kernels: on this project's
/// x86 CI machine the demo's score of 8 images took 2.1 s in fp16 against 14 ms in fp32.
pub fn native_f16() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

#[cfg(feature = "tract-cuda")]
fn cuda_runtime() -> Result<&'static dyn Runtime, RtError> {
    // Linking the crate registers its runtime.
    use tract_cuda as _;
    let why = |reason: String| RtError::Provider { provider: "tract-cuda".into(), reason };
    let rt = tract_onnx::tract_core::runtime::runtime_for_name("cuda")
        .map_err(|e| why(format!("{e:#}")))?
        .ok_or_else(|| why("tract's CUDA runtime is not registered".into()))?;
    rt.check().map_err(|e| {
        why(format!(
            "{e:#}: tract-cuda needs the NVIDIA driver (libcuda), cuBLAS, cuDNN, NVRTC and the CUDA runtime on the library path, and the CUDA headers for NVRTC"
        ))
    })?;
    Ok(rt)
}

#[cfg(not(feature = "tract-cuda"))]
fn cuda_runtime() -> Result<&'static dyn Runtime, RtError> {
    Err(RtError::Provider {
        provider: "tract-cuda".into(),
        reason: "this build of itarflow-rt has no tract-cuda: rebuild it with `--features tract-cuda`".into(),
    })
}

/// A prepared plan and its idle run states.
struct Plan {
    plan: Box<dyn Runnable>,
    states: Mutex<Vec<Box<dyn State>>>,
    /// A plan of an fp16 graph computing in fp32 ([`upcast`]): which outputs the graph gives in
    /// fp16.
    f16_outputs: Option<Vec<bool>>,
}

impl Plan {
    fn new(model: TypedModel, name: &str, device: TractDevice, f16_outputs: Option<Vec<bool>>) -> Result<Self, RtError> {
        let plan = device.runtime()?.prepare(model).map_err(|e| fail(&format!("optimising {name} for {}", device.name()), e))?;
        Ok(Self { plan, states: Mutex::new(Vec::new()), f16_outputs })
    }

    fn run(&self, inputs: TVec<TValue>, name: &str) -> Result<TVec<TValue>, RtError> {
        let inputs = match self.f16_outputs {
            Some(_) => upcast::inputs_up(inputs).map_err(|e| fail(name, e))?,
            None => inputs,
        };
        let outs = self.run_plan(inputs, name)?;
        match &self.f16_outputs {
            Some(f16) => upcast::outputs_down(outs, f16).map_err(|e| fail(name, e)),
            None => Ok(outs),
        }
    }

    fn run_plan(&self, inputs: TVec<TValue>, name: &str) -> Result<TVec<TValue>, RtError> {
        let pooled = self.states.lock().map_err(|_| fail(name, "state pool lock poisoned"))?.pop();
        let mut state = match pooled {
            Some(s) => s,
            None => self.plan.spawn().map_err(|e| fail(&format!("preparing {name}"), e))?,
        };
        let outs = state.run(inputs).map_err(|e| fail(&format!("running {name}"), e))?;
        if let Ok(mut pool) = self.states.lock() {
            pool.push(state);
        }
        Ok(outs)
    }
}

/// How a graph's plans are made.
enum Plans {
    /// One plan for every shape (symbols other than the batch).
    Symbolic(Plan),
    /// A plan per batch size (oldest first), each made from the file when first needed (the
    /// model is not kept in memory between plans); the batch is read from input `batch.0`'s
    /// axis `batch.1` (the first input dim that is N: a guided loop's inputs lead with the
    /// branch axis of 2).
    PerBatch { path: PathBuf, plans: Mutex<Vec<(usize, Arc<Plan>)>>, batch: (usize, usize) },
}

/// A graph ready to run on tract.
pub struct TractGraph {
    plans: Plans,
    name: String,
    device: TractDevice,
    /// How the CPU computes an fp16 graph.
    f16: F16Compute,
}

impl TractGraph {
    /// The graph at `path` as a typed model. On the CPU it is decluttered once its batch is set
    /// ([`Self::plan_for`], before the load-time rewrites), not here; tract-cuda's runtime gets it
    /// decluttered.
    fn typed(&self, path: &Path) -> Result<TypedModel, RtError> {
        Self::typed_for(path, self.device)
    }

    fn typed_for(path: &Path, device: TractDevice) -> Result<TypedModel, RtError> {
        tract_onnx::onnx()
            .model_for_path(path)
            .and_then(|m| m.into_typed())
            .and_then(|m| if device == TractDevice::Cpu { Ok(m) } else { m.into_decluttered() })
            .map_err(|e| fail(&format!("loading {}", path.display()), e))
    }

    /// A graph whose only symbolic dim is the batch N, known from elsewhere (the package
    /// manifest), which also says where the batch is: input `batch.0`, axis `batch.1`. Nothing is
    /// read until the first run, which makes the plan for its batch size (reading the file once
    /// per batch size instead of also once here).
    pub fn load_batched(path: &Path, batch: (usize, usize)) -> Self {
        Self::load_batched_on(path, TractDevice::Cpu, batch)
    }

    /// [`Self::load_batched`] on `device`.
    pub fn load_batched_on(path: &Path, device: TractDevice, batch: (usize, usize)) -> Self {
        Self::load_batched_with(path, device, batch, F16Compute::for_this_cpu())
    }

    /// [`Self::load_batched_on`], an fp16 graph computed on the CPU as `f16` says.
    pub fn load_batched_with(path: &Path, device: TractDevice, batch: (usize, usize), f16: F16Compute) -> Self {
        Self {
            plans: Plans::PerBatch { path: path.to_path_buf(), plans: Mutex::new(Vec::new()), batch },
            name: path.display().to_string(),
            device,
            f16,
        }
    }

    /// Loads and declutters the ONNX graph at `path` (external data is read beside it), and
    /// finds from its inputs whether it gets a plan per batch size.
    pub fn load(path: &Path) -> Result<Self, RtError> {
        Self::load_on(path, TractDevice::Cpu)
    }

    /// [`Self::load`] on `device`.
    pub fn load_on(path: &Path, device: TractDevice) -> Result<Self, RtError> {
        Self::load_with(path, device, F16Compute::for_this_cpu())
    }

    /// [`Self::load_on`], an fp16 graph computed on the CPU as `f16` says.
    pub fn load_with(path: &Path, device: TractDevice, f16: F16Compute) -> Result<Self, RtError> {
        Self::load_inner(path, device, f16).map_err(|e| device.own(e))
    }

    /// `model` as the plan computes it, and which outputs go back to fp16: on the CPU with
    /// [`F16Compute::Fp32`], an fp16 graph translated to fp32.
    fn for_compute(&self, model: TypedModel) -> Result<(TypedModel, Option<Vec<bool>>), RtError> {
        Self::compute_as(model, &self.name, self.device, self.f16)
    }

    fn compute_as(model: TypedModel, name: &str, device: TractDevice, f16: F16Compute) -> Result<(TypedModel, Option<Vec<bool>>), RtError> {
        match (device, f16) {
            (TractDevice::Cpu, F16Compute::Fp32) => upcast::to_fp32(model).map_err(|e| fail(&format!("translating {name} to fp32"), e)),
            _ => Ok((model, None)),
        }
    }

    fn load_inner(path: &Path, device: TractDevice, f16: F16Compute) -> Result<Self, RtError> {
        let name = path.display().to_string();
        let model = Self::typed_for(path, device)?;
        let mut symbols: HashMap<String, Symbol> = HashMap::new();
        let mut batch = None;
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i).map_err(|e| fail(&name, e))?;
            for (axis, d) in fact.shape.iter().enumerate() {
                if batch.is_none() && d.to_string() == "N" {
                    batch = Some((i, axis));
                }
                for s in d.symbols() {
                    symbols.insert(s.to_string(), s);
                }
            }
        }
        // The growing-cache step graphs (N and the past length P) also get a plan per batch size,
        // P left symbolic: N made concrete fuses their row-wise ops (layer-5 step at 32 rows,
        // 24 cached: 2.95 -> 2.8 ms).
        match (symbols.remove("N"), batch) {
            (Some(_), Some(batch)) if symbols.keys().all(|k| k == "P") => Ok(Self::load_batched_with(path, device, batch, f16)),
            _ => {
                let (model, f16_outputs) = Self::compute_as(model, &name, device, f16)?;
                Ok(Self { plans: Plans::Symbolic(Plan::new(model, &name, device, f16_outputs)?), name, device, f16 })
            }
        }
    }

    fn upload(&self, t: &HostTensor) -> Result<TValue, RtError> {
        let tensor = match t {
            HostTensor::F32(s, d) => Tensor::from_shape(s, d),
            HostTensor::F16(s, d) => Tensor::from_shape(s, d),
            HostTensor::I64(s, d) => Tensor::from_shape(s, d),
        };
        tensor.map(|t| t.into_tvalue()).map_err(|e| fail("input", e))
    }

    /// The plan for inputs whose first dim is `n` (made on first use).
    fn plan_for(&self, path: &Path, plans: &Mutex<Vec<(usize, Arc<Plan>)>>, n: usize) -> Result<Arc<Plan>, RtError> {
        let mut plans = plans.lock().map_err(|_| fail(&self.name, "plan cache lock poisoned"))?;
        if let Some((_, p)) = plans.iter().find(|(b, _)| *b == n) {
            return Ok(p.clone());
        }
        let model = self.typed(path)?;
        let batch = model.symbols.sym("N");
        let concrete = model
            .set_symbols(&HashMap::from([(batch, TDim::Val(n as i64))]))
            .map_err(|e| fail(&format!("setting the batch of {} to {n}", self.name), e))?;
        let (mut concrete, f16_outputs) = self.for_compute(concrete)?;
        if self.device == TractDevice::Cpu {
            concrete = rewrite_for_cpu(concrete).map_err(|e| fail(&format!("rewriting {} for tract's CPU runtime", self.name), e))?.0;
        }
        let plan = Arc::new(Plan::new(concrete, &self.name, self.device, f16_outputs)?);
        if plans.len() >= MAX_BATCH_PLANS {
            plans.remove(0);
        }
        plans.push((n, plan.clone()));
        Ok(plan)
    }
}

fn download(v: &TValue) -> Result<HostTensor, RtError> {
    let t = v.cast_to::<f32>().map_err(|e| fail("output", e))?;
    let view = t.to_plain_array_view::<f32>().map_err(|e| fail("output", e))?;
    Ok(HostTensor::F32(view.shape().to_vec(), view.iter().copied().collect()))
}

impl Engine for TractGraph {
    type Value = TValue;

    fn upload(&self, t: &HostTensor) -> Result<TValue, RtError> {
        TractGraph::upload(self, t)
    }

    fn download(&self, v: &TValue) -> Result<HostTensor, RtError> {
        download(v)
    }

    fn run_values(&self, inputs: Vec<&TValue>) -> Result<Vec<TValue>, RtError> {
        self.run_inner(inputs).map_err(|e| self.device.own(e))
    }

    fn concurrent(&self) -> bool {
        // CPU plans run in parallel (a state each); GPU runs share one device.
        self.device == TractDevice::Cpu
    }

    fn prepare(&self, batch: usize) -> Result<(), RtError> {
        match &self.plans {
            Plans::Symbolic(_) => Ok(()),
            Plans::PerBatch { path, plans, .. } => self.plan_for(path, plans, batch).map(|_| ()).map_err(|e| self.device.own(e)),
        }
    }
}

impl TractGraph {
    fn run_inner(&self, inputs: Vec<&TValue>) -> Result<Vec<TValue>, RtError> {
        // TValues share their data: these clones copy no tensor.
        let inputs: TVec<TValue> = inputs.into_iter().cloned().collect();
        // Subnormals flushed on this thread for the run (see `denormals`); tract-cuda computes on
        // the device.
        let _flush = (self.device == TractDevice::Cpu).then(super::denormals::FlushToZero::new);
        let outs = match &self.plans {
            Plans::Symbolic(plan) => plan.run(inputs, &self.name)?,
            Plans::PerBatch { path, plans, batch: (input, axis) } => {
                let n = inputs
                    .get(*input)
                    .and_then(|v| v.shape().get(*axis).copied())
                    .ok_or_else(|| fail(&self.name, format!("input {input} has no axis {axis} (the batch)")))?;
                self.plan_for(path, plans, n)?.run(inputs, &self.name)?
            }
        };
        Ok(outs.into_iter().collect())
    }
}

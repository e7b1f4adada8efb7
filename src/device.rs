//! Which Burn device models run and train on, chosen once per process.
//!
//! - `cpu`: Burn's Flex backend (pure Rust, always built; the default).
//! - `vulkan`: Burn's wgpu backend pinned to Vulkan (SPIR-V kernels, no LLVM, builds offline):
//!   any GPU with a Vulkan driver, or Mesa's software rasteriser lavapipe. Needs the `vulkan`
//!   cargo feature and a Vulkan loader (`libvulkan.so.1`) with an ICD at run time.
//! - `wgpu`: Burn's wgpu backend with WGSL kernels (the `wgpu` feature), translated by wgpu's naga
//!   for the platform's API (Vulkan on Linux). In a build without `vulkan` cubecl has no SPIR-V
//!   compiler of its own, so this is the path for Vulkan drivers that cannot compile cubecl's
//!   SPIR-V (Mesa's lavapipe crashes on its matmul kernel).
//! - `cuda`: Burn's CUDA backend (the `cuda` feature; its build script downloads LLVM, so it is
//!   built on a networked GPU host).
//!
//! The `itarflow` binary selects with `--device`; a library user calls [`select`] before building
//! models, or passes devices of their own to the functions that take one.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::prelude::Device;
use thiserror::Error;

/// A device family the toolkit can run Burn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// Flex, on the CPU.
    #[default]
    Cpu,
    /// wgpu on Vulkan, adapter chosen by wgpu (a discrete GPU first; `CUBECL_WGPU_DEFAULT_DEVICE`
    /// overrides).
    Vulkan,
    /// wgpu with WGSL kernels, API and adapter chosen by wgpu (`CUBECL_WGPU_DEFAULT_DEVICE`
    /// overrides the adapter).
    Wgpu,
    /// The first CUDA GPU.
    Cuda,
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected cpu, vulkan, wgpu or cuda")]
    Unknown(String),
    #[error("--device {kind} needs a build with the `{kind}` feature: cargo build --release --features {kind}")]
    NotBuilt { kind: DeviceKind },
    #[error(
        "the {kind} device did not start ({reason}); for Vulkan, install a Vulkan driver (a GPU's, or Mesa's \
         lavapipe: apt install mesa-vulkan-drivers libvulkan1) or pick another --device"
    )]
    Unavailable { kind: DeviceKind, reason: String },
    #[error("the device was already chosen ({0}); select it once, before any model is built")]
    AlreadySelected(DeviceKind),
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Vulkan => "vulkan",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// Whether this build can run on this kind of device.
    pub fn is_built(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Vulkan => cfg!(feature = "vulkan"),
            DeviceKind::Wgpu => cfg!(feature = "wgpu"),
            DeviceKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The Burn device of this kind (lazy: nothing is opened until a tensor is made on it).
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "vulkan")]
            DeviceKind::Vulkan => Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            kind => Err(DeviceError::NotBuilt { kind }),
        }
    }

    /// The device, opened and checked with a small computation (a sum and a matmul, read back):
    /// a missing driver is an error here, not a panic deep inside a training step.
    pub fn open(self) -> Result<Device, DeviceError> {
        let device = self.device()?;
        if self == DeviceKind::Cpu {
            return Ok(device);
        }
        let probe = device.clone();
        // The backend reports a missing adapter by panicking on its own device thread; keep the
        // first panic's message (from any thread) as the reason and print none of them.
        static FIRST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "it panicked".into());
            if let Ok(mut first) = FIRST_PANIC.lock() {
                first.get_or_insert(message);
            }
        }));
        let result = std::panic::catch_unwind(move || {
            use burn::tensor::Tensor;
            let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &probe);
            let s: Vec<f32> = a.clone().matmul(a).sum().into_data().try_to_vec::<f32>().unwrap_or_default();
            s
        });
        std::panic::set_hook(previous);
        let first = FIRST_PANIC.lock().ok().and_then(|mut f| f.take());
        match result {
            Ok(s) if s == [54.0] => Ok(device),
            Ok(s) => Err(DeviceError::Unavailable { kind: self, reason: format!("a 2x2 matmul and sum gave {s:?}, not [54.0]") }),
            Err(_) => Err(DeviceError::Unavailable { kind: self, reason: first.unwrap_or_else(|| "it panicked".into()) }),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceKind::Cpu),
            "vulkan" => Ok(DeviceKind::Vulkan),
            "wgpu" => Ok(DeviceKind::Wgpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

static SELECTED: OnceLock<(DeviceKind, Device)> = OnceLock::new();

/// Chooses the device of this process (opened and checked, see [`DeviceKind::open`]). Choosing the
/// same kind again is allowed; another kind after the first is an error.
pub fn select(kind: DeviceKind) -> Result<(), DeviceError> {
    if let Some((chosen, _)) = SELECTED.get() {
        return if *chosen == kind { Ok(()) } else { Err(DeviceError::AlreadySelected(*chosen)) };
    }
    let device = kind.open()?;
    let (chosen, _) = SELECTED.get_or_init(|| (kind, device));
    if *chosen == kind { Ok(()) } else { Err(DeviceError::AlreadySelected(*chosen)) }
}

/// The kind in use: the one [`select`]ed, else CUDA in a `cuda` build, else the CPU.
pub fn selected() -> DeviceKind {
    SELECTED.get().map(|(k, _)| *k).unwrap_or(if cfg!(feature = "cuda") { DeviceKind::Cuda } else { DeviceKind::Cpu })
}

/// The device models run and train on: the one [`select`]ed, else the first CUDA GPU in a `cuda`
/// build, else Flex on the CPU.
pub fn default_device() -> Device {
    if let Some((_, device)) = SELECTED.get() {
        return device.clone();
    }
    selected().device().unwrap_or_else(|_| Device::flex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unbuilt_kinds_say_the_feature() {
        for kind in [DeviceKind::Cpu, DeviceKind::Vulkan, DeviceKind::Wgpu, DeviceKind::Cuda] {
            assert_eq!(kind.name().parse::<DeviceKind>().unwrap(), kind);
        }
        assert!(matches!("metal".parse::<DeviceKind>(), Err(DeviceError::Unknown(_))));
        if !cfg!(feature = "vulkan") {
            let e = DeviceKind::Vulkan.open().unwrap_err().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
        if !cfg!(feature = "wgpu") {
            let e = DeviceKind::Wgpu.open().unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
        assert!(DeviceKind::Cpu.open().is_ok());
    }
}

#!/usr/bin/env bash
# Installs what the toolkit's commands need beyond the Rust toolchain. Idempotent.
# - Fashion-MNIST (Debian's dataset-fashion-mnist) for `itarflow train` / `eval-nll` defaults.
#   The test suite makes its own small data and does not need it.
set -euo pipefail
cargo --version
rustc --version
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
            || echo "note: could not install dataset-fashion-mnist; training on Fashion-MNIST needs it"
    else
        echo "note: Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)"
    fi
fi
# A Vulkan loader and Mesa's lavapipe (Vulkan on the CPU), for the parity test of Burn's wgpu
# backend (`cargo test --release --features wgpu --test vulkan_tests`), which CI runs.
if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ! ldconfig -p | grep -q libvulkan.so.1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq libvulkan1 mesa-vulkan-drivers) \
            || echo "note: could not install libvulkan1 and mesa-vulkan-drivers; the wgpu parity test needs them"
    else
        echo "note: no lavapipe (sudo apt-get install libvulkan1 mesa-vulkan-drivers)"
    fi
fi
# ONNX Runtime for the runtime's cpu provider (and its tests), loaded at run time by itarflow-rt
# from the wheel's capi/ directory; GPU hosts install onnxruntime-gpu instead (see the README).
if ! python3 -c "import onnxruntime; assert onnxruntime.__version__ == '1.31.1'" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check onnxruntime==1.31.1
fi
python3 -c "import onnxruntime, os; print('onnxruntime', onnxruntime.__version__, os.path.dirname(onnxruntime.__file__))"
# NVIDIA Triton's Python clients (REST and gRPC), which the tests of `itarflow-rt serve` call the
# server with.
if ! python3 -c "import tritonclient.http, tritonclient.grpc, importlib.metadata as m; assert m.version('tritonclient') == '2.73.0'" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "tritonclient[http,grpc]==2.73.0"
fi

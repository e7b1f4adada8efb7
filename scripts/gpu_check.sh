#!/usr/bin/env bash
# The GPU acceptance run of itarflow-rt: on a machine with an NVIDIA GPU and ONNX Runtime's GPU
# build, checks every graph of the demo package on TensorRT, CUDA and ONNX Runtime CPU against the
# package's reference outputs, measures each provider, and samples a grid on each.
#
# Usage: bash scripts/gpu_check.sh [ITARFLOW_RT_BINARY] [OUT_DIR]
#   ITARFLOW_RT_BINARY  default: target-gpu/itarflow-rt (a copy of the release binary, for machines
#                       that do not build the project), else $CARGO_TARGET_DIR/release/itarflow-rt
#   OUT_DIR             default: $OUT, else gpu-check/
# Needs libonnxruntime with the CUDA and TensorRT providers (pip install onnxruntime-gpu==1.31.1,
# or ORT_DYLIB_PATH pointing at it) and TensorRT 10's libnvinfer on the library path. What is
# missing is written to OUT_DIR/environment.txt and the run goes on with what loads; the exit code
# is check's (non-zero past tolerance or when no GPU provider loads).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target-gpu/itarflow-rt}
if [ ! -x "$bin" ]; then
    bin="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}/release/itarflow-rt"
fi
out=${2:-${OUT:-gpu-check}}
mkdir -p "$out"
{
    echo "date: $(date -u)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not found"
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers(), o.__file__)" 2>&1
    echo "ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-}"
    ldconfig -p 2>/dev/null | grep -E "libnvinfer|libcudart|libcudnn|libcublas" || echo "no TensorRT/CUDA libraries in ldconfig"
} > "$out/environment.txt"
cat "$out/environment.txt"

"$bin" check --providers tensorrt,cuda,cpu --json > "$out/check.json" 2> "$out/check.err"
status=$?
"$bin" check --providers tensorrt,cuda,cpu > "$out/check.txt" 2>&1
cat "$out/check.txt"
if grep -q '"engine": "\(tensorrt\|cuda\)"' "$out/check.json"; then
    for batch in 16 64; do
        "$bin" bench --providers tensorrt,cuda,cpu --batch "$batch" --json >> "$out/bench.jsonl" 2>> "$out/bench.err"
        "$bin" bench --providers tensorrt,cuda --batch "$batch" --step-cache growing --json >> "$out/bench.jsonl" 2>> "$out/bench.err"
    done
    cat "$out/bench.jsonl"
    for p in tensorrt cuda; do
        "$bin" sample --provider "$p" --per-class 4 --cfg 2 --out "$out/samples_$p.png" --json >> "$out/sample.jsonl" 2>> "$out/sample.err"
    done
else
    echo "no GPU provider loaded: see $out/check.err and $out/environment.txt" | tee -a "$out/environment.txt"
    [ "$status" -eq 0 ] && status=2
fi
exit "$status"

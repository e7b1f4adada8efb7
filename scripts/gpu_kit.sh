#!/usr/bin/env bash
# Makes the kit that scripts/gpu_check.sh runs on a GPU host without network, in parts small
# enough to travel one per call of the device tool beside the checkout:
#
#   bash scripts/gpu_kit.sh OUT_DIR [PART_MB]      (default 36 MB per part)
#
# OUT_DIR/a, OUT_DIR/b, ...: ONNX Runtime 1.31.1's GPU libraries (onnxruntime-gpu from PyPI) with
# the CUDA provider's cubins for other GPU architectures than sm_90 (Hopper: H100, H200) zeroed
# (scripts/strip_fatbin.py; 219 MB of fat binary -> 77 MB that matter, 61 MB compressed in all),
# the release binaries itarflow-rt and itarflow, stripped, and a zstd binary (the host has none),
# all zstd-compressed. Set ARCHS=80,86,89,90,120 to keep other architectures' cubins.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_kit.sh OUT_DIR [PART_MB]}
mb=${2:-36}
archs=${ARCHS:-90}
target=${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp" onnxruntime-gpu==1.31.1
( cd "$tmp" && unzip -q -o ./*.whl 'onnxruntime/capi/libonnxruntime*.so*' )
lib="$tmp/onnxruntime/capi"
python3 scripts/strip_fatbin.py "$lib/libonnxruntime_providers_cuda.so" "$archs"
tar -C "$lib" -c libonnxruntime.so.1.31.1 libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so \
  libonnxruntime_providers_tensorrt.so | zstd -q -19 -T0 --long=27 -o "$tmp/ort-gpu.tar.zst"
for b in itarflow-rt itarflow; do
    strip -o "$tmp/$b" "$target/release/$b"
    zstd -q -19 -T0 "$tmp/$b" -o "$tmp/$b.zst"
done
rm -rf "$out"
mkdir -p "$out"
split -b "$((mb * 1000000))" -d -a 2 "$tmp/ort-gpu.tar.zst" "$tmp/ort-gpu.tar.zst."
# Parts in order, each filled up to PART_MB: the ONNX Runtime chunks, then zstd and the binaries.
part=0
size=$((mb * 1000000))
used=$size
for f in "$tmp"/ort-gpu.tar.zst.?? "$(command -v zstd)" "$tmp/itarflow-rt.zst" "$tmp/itarflow.zst"; do
    n=$(stat -c %s "$f")
    if [ $((used + n)) -gt "$size" ]; then
        part=$((part + 1))
        used=0
    fi
    d="$out/$(printf "\\x$(printf %x $((96 + part)))")"
    mkdir -p "$d"
    cp "$f" "$d/"
    used=$((used + n))
done
du -sh "$out"/*

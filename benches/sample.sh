#!/usr/bin/env bash
# Sampling throughput and peak memory of the demo model: the Burn sampler, and the runtime on
# tract and on ONNX Runtime CPU; 16 images, guidance 2, 10 denoising steps, one process each,
# three runs per engine (the README gives each engine's median).
# Writes JSON lines to benches/results/sample.jsonl. Usage: bash benches/sample.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}"
cargo build --release --workspace --quiet
bin="$CARGO_TARGET_DIR/release"
mkdir -p benches/results
out=benches/results/sample.jsonl
: > "$out"
measure() {
    local name=$1; shift
    local log
    log=$(mktemp)
    /usr/bin/time -v "$@" --num 16 --cfg 2 --seed 0 --output "$log.npz" --json 2> "$log" > "$log.json"
    local rss
    rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$log")
    python3 -c "import json,sys; d=json.load(open('$log.json')); d['engine']='$name'; d['peak_rss_mib']=$rss/1024; print(json.dumps(d))" | tee -a "$out"
    rm -f "$log" "$log.json" "$log.npz"
}
for run in 1 2 3; do
    measure burn "$bin/itarflow" sample --ckpt models/fmnist/model.safetensors
    measure tract "$bin/itarflow-rt" sample --provider tract
    measure ort-cpu "$bin/itarflow-rt" sample --provider cpu
done

#!/usr/bin/env bash
# Export time and peak memory of `itarflow export` for randomly initialised models of three sizes:
# the reference tiny model, fmnist-m (10 M parameters) and an S-sized 64 px RGB model
# (benches/configs/s64.json, 63 M parameters, 256 tokens, 20 blocks), fp32 and both precisions.
# Writes JSON lines to benches/results/export.jsonl. Usage: bash benches/export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}"
cargo build --release -p itarflow --quiet
bin="$CARGO_TARGET_DIR/release/itarflow"
mkdir -p benches/results
out=benches/results/export.jsonl
: > "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
measure() {
    local name=$1 ckpt=$2 precision=$3
    local log="$work/time.log"
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -v "$bin" export --ckpt "$ckpt" --out "$work/pkg" --precision "$precision" 2> "$log"
    end=$(date +%s.%N)
    local rss bytes graphs
    rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$log")
    bytes=$(du -sb "$work/pkg" | cut -f1)
    graphs=$(python3 -c "import json; print(len(json.load(open('$work/pkg/manifest.json'))['graphs']))")
    python3 -c "import json; print(json.dumps({'model': '$name', 'precision': '$precision', 'graphs': $graphs, 'seconds': round($end - $start, 2), 'peak_rss_mib': round($rss / 1024), 'package_mib': round($bytes / 2**20, 1)}))" | tee -a "$out"
}
"$bin" init --preset tiny16 --out "$work/tiny.safetensors"
"$bin" init --preset fmnist-m --out "$work/m.safetensors"
"$bin" init --model-config benches/configs/s64.json --out "$work/s64.safetensors"
for model in tiny m s64; do
    for precision in fp32 both; do
        measure "$model" "$work/$model.safetensors" "$precision"
    done
done

#!/usr/bin/env bash
# Training throughput and peak memory for a small and a medium model, one process each, written
# as JSON lines to benches/results/train.jsonl. Usage: bash benches/train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/itarflow"
mkdir -p benches/results
out=benches/results/train.jsonl
: > "$out"
"$bin" bench-train --model-config models/fmnist/model.json --batch-size 64 --steps 20 --out "$out"
"$bin" bench-train --preset fmnist-m --batch-size 32 --steps 10 --out "$out"

#!/usr/bin/env bash
# Reproduces the shipped Fashion-MNIST demo model: training, evaluation, sample grids, export.
# Every number in models/fmnist/README.md comes from one of these commands.
# Needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it). Training is three runs: about
# 90 minutes of one core, then about 110 and 90 minutes of both cores of a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}"
cargo build --release --workspace
bin="$CARGO_TARGET_DIR/release/itarflow"
run1="${RUN_DIR:-runs/fmnist}"
run2="${RUN_DIR2:-runs/fmnist2}"
run="${RUN_DIR3:-runs/fmnist3}"

# 1a. The first run (seed 0), the demo shipped until 2026-12-05. It was stopped after 62 minutes
#     and resumed, which is bit-exact: `--max-minutes` only decides where the pause falls.
#     `--workers 1`: one autodiff graph per step, the arithmetic it was trained with.
"$bin" train --workers 1 --out-dir "$run1" --model-config models/fmnist/model.json \
    --steps 4500 --batch-size 64 --lr 5e-4 --min-lr 1e-5 --warmup 300 --ema 0.999 \
    --grad-clip 1.0 --label-dropout 0.1 --seed 0 --checkpoint-every 250 \
    --sample-every 1000 --eval-every 500 --eval-images 1000 --log-every 50 --sample-cfg 1.0 \
    --max-minutes 62
"$bin" train --workers 1 --resume "$run1"
"$bin" convert --ckpt "$run1/model.safetensors" --out "$run1/model_fp16.safetensors" --precision fp16

# 1b. The second run starts from the first one's fp16 EMA weights (`--init`: fresh AdamW state
#     and EMA), a new cosine schedule of 12,000 steps and new data order (seed 1); the batch split
#     over 2 workers (this machine's cores; other counts differ in float rounding).
"$bin" train --workers 2 --init "$run1/model_fp16.safetensors" --out-dir "$run2" \
    --steps 12000 --batch-size 64 --lr 4e-4 --min-lr 1e-5 --warmup 200 --ema 0.999 \
    --grad-clip 1.0 --label-dropout 0.1 --seed 1 --checkpoint-every 250 \
    --sample-every 1000 --eval-every 1000 --eval-images 1000 --log-every 50 --sample-cfg 2.0
"$bin" convert --ckpt "$run2/model.safetensors" --out "$run2/model_fp16.safetensors" --precision fp16

# 1c. The third run starts from the second one's fp16 EMA weights the same way: 10,000 steps,
#     the same learning rates, seed 2.
"$bin" train --workers 2 --init "$run2/model_fp16.safetensors" --out-dir "$run" \
    --steps 10000 --batch-size 64 --lr 4e-4 --min-lr 1e-5 --warmup 200 --ema 0.999 \
    --grad-clip 1.0 --label-dropout 0.1 --seed 2 --checkpoint-every 250 \
    --sample-every 2500 --eval-every 1000 --eval-images 1000 --log-every 50 --sample-cfg 2.0

# 2. Ship the EMA weights in fp16.
"$bin" convert --ckpt "$run/model.safetensors" --out models/fmnist/model.safetensors --precision fp16

# 3. Test bits/dim at t_min on all 10,000 test images, for both precisions.
"$bin" eval-nll --ckpt "$run/model.safetensors" --split test --json
"$bin" eval-nll --ckpt models/fmnist/model.safetensors --split test --json

# 4. Sample grids, one row per class, Burn sampler (seed 0).
"$bin" sample --ckpt models/fmnist/model.safetensors --per-class 10 --cfg 2 --seed 0 --out models/fmnist/samples_cfg2.png
"$bin" sample --ckpt models/fmnist/model.safetensors --per-class 10 --cfg 0 --seed 0 --out models/fmnist/samples_cfg0.png

# 5. The package that itarflow-rt samples from by default, checked against Burn.
"$bin" export --ckpt models/fmnist/model.safetensors --out models/fmnist/package --cfg 2 --precision both --check

# 6. Sample quality with the shipped classifier (models/classifier; `itarflow train-classifier
#    --out models/classifier` retrains it): FLD and class accuracy of 10,000 samples, then the
#    ablations at 1,000 images per row (table, JSON and plot in models/fmnist/quality). At high
#    guidance scales a few images diverge while denoising: `--retries 3` draws them again from new
#    noise and the table counts them per row.
rt="$CARGO_TARGET_DIR/release/itarflow-rt"
"$rt" eval-quality --provider cpu --num 10000 --json
"$rt" ablate --provider cpu --num 1000 --retries 3 --out models/fmnist/quality

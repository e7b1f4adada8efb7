#!/usr/bin/env bash
# The GPU acceptance run of itarflow-rt, in stages, for a GPU host without network (the device
# machine) or any machine with an NVIDIA GPU:
#
#   bash scripts/gpu_check.sh stash DIR   copy a part of the GPU kit (DIR/*) to $KIT, outside the checkout
#   bash scripts/gpu_check.sh setup       rebuild ONNX Runtime's GPU build and the binaries in $KIT,
#                                         find the CUDA libraries, record the environment
#   bash scripts/gpu_check.sh demo        check every graph of the demo package on cuda, cpu,
#                                         tensorrt and tract-cuda; bench it (batch 16 and 256, fp32,
#                                         fp16, TF32, loops on/off); a sample grid per GPU provider
#   bash scripts/gpu_check.sh s64         the S-sized benchmark model (untrained, `itarflow init`):
#                                         export, check on cuda, bench at batch 16
#   bash scripts/gpu_check.sh quick       a shorter recheck: check the demo on cuda (summary),
#                                         bench it at batch 16 and 256; s64 export, check, bench
#   bash scripts/gpu_check.sh loops       whole loops as one CUDA graph (--cuda-graphs loop) against
#                                         ONNX Runtime's per-run graphs (step): seeded samples compared,
#                                         bench at batch 16 and 256; --precision fp16 and mixed at 256
#   bash scripts/gpu_check.sh cpu         the CPU providers on the host's cores (the README's CPU figures
#                                         are of a 2-core VM): bench tract and ONNX Runtime CPU at
#                                         batch 16 and 64, CFG 2; tract as an AVX2 CPU at batch 16;
#                                         tract with and without its row ops (ITARFLOW_TRACT_REWRITES)
#   bash scripts/gpu_check.sh serve       `itarflow-rt serve --provider cuda` (SERVE_PROVIDER): 8 clients, 96 requests
#                                         of 1 to 12 images (every batch size merged differently),
#                                         padded (the default on CUDA) and not: images/s, the metrics
#   bash scripts/gpu_check.sh profile     where a GPU's time goes, kernel by kernel: Nsight Compute
#                                         (ncu, where the machine lets it read the GPU) over a window
#                                         of kernels of a demo sampling run at batch 256 (CUDA graphs
#                                         off), summed by kernel name into $OUT/kernels.txt
#
# The kit (made here by scripts/gpu_kit.sh): ort-gpu.tar.zst.NN (ONNX Runtime 1.31.1's GPU
# libraries, other architectures' cubins zeroed), zstd, itarflow-rt.zst, itarflow.zst. On a
# machine with onnxruntime-gpu installed and the binaries built, set ORT_DYLIB_PATH, RT and
# ITARFLOW instead and run demo / s64 directly. Results go to $OUT (default gpu-check/): a log,
# the check reports, bench JSON lines, grids.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-/root/itarflow-gpu}
out=${OUT:-gpu-check}
mkdir -p "$out"
log="$out/log.txt"
say() { echo "== $*" | tee -a "$log"; }
# Runs a command with a time limit, its output to the log (and stdout); never stops the script.
run() {
    local limit=$1
    shift
    echo "\$ $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "(exit $rc)" | tee -a "$log"
    return 0
}

load_env() {
    # shellcheck disable=SC1091
    [ -f "$KIT/env.sh" ] && . "$KIT/env.sh"
    RT=${RT:-$KIT/bin/itarflow-rt}
    ITARFLOW=${ITARFLOW:-$KIT/bin/itarflow}
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
}

stage_stash() {
    mkdir -p "$KIT"
    cp -r "$1"/. "$KIT"/
    ls -la "$KIT"
}

stage_setup() {
    local z="$KIT/zstd"
    command -v zstd >/dev/null && z=$(command -v zstd)
    chmod +x "$KIT/zstd" 2>/dev/null
    mkdir -p "$KIT/ort" "$KIT/bin"
    say "ONNX Runtime GPU libraries"
    cat "$KIT"/ort-gpu.tar.zst.* | "$z" -q -d | tar -x -C "$KIT/ort" && ls -la "$KIT/ort" | tee -a "$log"
    for b in itarflow-rt itarflow; do
        [ -f "$KIT/$b.zst" ] && "$z" -q -d -f "$KIT/$b.zst" -o "$KIT/bin/$b" && chmod +x "$KIT/bin/$b"
    done
    local cuda
    cuda=$(find / -xdev \( -name 'libcudnn.so.9' -o -name 'libcublasLt.so.13' -o -name 'libcudart.so.13' \
        -o -name 'libcufft.so.12' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
    local home=/usr/local/cuda
    [ -d "$home/include" ] || home=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")
    {
        echo "export ORT_DYLIB_PATH=$(ls "$KIT"/ort/libonnxruntime.so.1.*)"
        echo "export LD_LIBRARY_PATH=$KIT/ort:$cuda:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
        echo "export CUDA_HOME=$home"
    } > "$KIT/env.sh"
    load_env
    say "environment"
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
        nvcc --version 2>&1 | tail -2
        cat "$KIT/env.sh"
        echo "CUDA provider's libraries:"
        ldd "$KIT/ort/libonnxruntime_providers_cuda.so" | grep -E "not found|cudnn|cublas|cudart" || true
        echo "TensorRT: $(ldconfig -p 2>/dev/null | grep -c libnvinfer) libnvinfer entries in ldconfig"
        ls "$CUDA_HOME/include/cuda_fp16.h" 2>&1
        "$RT" --version 2>&1
    } 2>&1 | tee -a "$log"
}

stage_demo() {
    load_env
    say "check: demo package, every graph, fp32 and fp16, on cuda, cpu and tensorrt"
    timeout 240 "$RT" check --providers cuda,cpu,tensorrt --json > "$out/check_demo.json" 2> "$out/check_demo.err"
    echo "exit $?" >> "$out/check_demo.err"
    summarize_check "$out/check_demo.json"
    tail -3 "$out/check_demo.err" | tee -a "$log"
    say "check: demo package on cuda with TF32"
    run 120 "$RT" check --providers cuda --tf32
    say "check: demo package on tract-cuda"
    run 240 "$RT" check --providers tract-cuda
    say "bench: demo package, CFG 2 (the reference's settings: tarflow, 1 guided layer, t 0.3 -> 0.01, 10 steps)"
    local b
    for b in 16 256; do
        run 240 "$RT" bench --providers cuda --batch "$b" --cfg 2 --json --repeats 5
        run 240 "$RT" bench --providers cuda --batch "$b" --cfg 2 --json --repeats 5 --precision fp16
        run 240 "$RT" bench --providers cuda --batch "$b" --cfg 2 --json --repeats 5 --tf32
    done
    run 240 "$RT" bench --providers cuda --batch 16 --cfg 2 --json --repeats 5 --no-cuda-graphs
    run 240 "$RT" bench --providers cuda --batch 16 --cfg 2 --json --repeats 5 --resident off
    run 300 "$RT" bench --providers tract-cuda --batch 16 --cfg 2 --json --repeats 3
    grep '^{' "$log" > "$out/bench.jsonl"
    say "seeded samples: cuda (IEEE fp32) against ONNX Runtime CPU"
    run 120 "$RT" sample --provider cuda --seed 1 --num 32 --cfg 2 --output /tmp/x_cuda.npz
    run 300 "$RT" sample --provider cpu --seed 1 --num 32 --cfg 2 --output /tmp/x_cpu.npz
    python3 -c "import numpy as n; a=n.load('/tmp/x_cuda.npz')['x']; b=n.load('/tmp/x_cpu.npz')['x']; print('max |cuda - cpu| over', a.shape, float(abs(a-b).max()))" 2>&1 | tee -a "$log"
    say "grids"
    run 120 "$RT" sample --provider cuda --per-class 8 --cfg 2 --out "$out/samples_cuda.png"
    run 240 "$RT" sample --provider tract-cuda --per-class 2 --cfg 2 --out "$out/samples_tract_cuda.png"
}

stage_s64() {
    load_env
    local dir=/root/s64
    mkdir -p "$dir"
    say "s64: init and export (fp32 and fp16, CFG 2)"
    [ -f "$dir/s64.safetensors" ] || run 120 "$ITARFLOW" init --model-config benches/configs/s64.json --out "$dir/s64.safetensors"
    [ -f "$dir/pkg/manifest.json" ] || run 300 "$ITARFLOW" export --ckpt "$dir/s64.safetensors" --out "$dir/pkg" --precision both --cfg 2
    say "check: s64 on cuda"
    run 300 "$RT" check --model "$dir/pkg" --providers cuda
    say "bench: s64, batch 16, CFG 2"
    run 300 "$RT" bench --model "$dir/pkg" --providers cuda --batch 16 --cfg 2 --json --repeats 3
    run 300 "$RT" bench --model "$dir/pkg" --providers cuda --batch 16 --cfg 2 --json --repeats 3 --precision fp16
    run 300 "$RT" bench --model "$dir/pkg" --providers cuda --batch 16 --cfg 2 --json --repeats 3 --tf32
    grep '^{' "$log" > "$out/bench_s64.jsonl"
}

# Per engine and precision: outputs within tolerance, the worst, skipped providers and graphs
# that could not run, from a check report in JSON.
summarize_check() {
    python3 - "$1" <<'EOF' 2>&1 | tee -a "$log"
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["rows"]
for eng in sorted({x["engine"] for x in rows}):
    for prec in ("fp32", "fp16", "tf32"):
        sel = [x for x in rows if x["engine"] == eng and x["precision"] == prec]
        if sel:
            worst = max(sel, key=lambda x: x["rel"] / x["tolerance"])
            print(f"{eng:10} {prec}: {sum(x['pass'] for x in sel)}/{len(sel)} pass; worst {worst['graph']} {worst['output']} {worst['rel']:.2e} (tol {worst['tolerance']:.0e})")
for p, why in r["skipped"]:
    print(f"skipped {p}: {why[:300]}")
for u in r.get("unsupported", []):
    print("could not run:", str(u)[:300])
EOF
}

stage_quick() {
    load_env
    say "check: demo package on cuda"
    timeout 240 "$RT" check --providers cuda --json > /tmp/check_demo.json 2>> "$log"
    summarize_check /tmp/check_demo.json
    say "bench: demo package, CFG 2"
    run 120 "$RT" bench --providers cuda --batch 16 --cfg 2 --json --repeats 5
    run 120 "$RT" bench --providers cuda --batch 256 --cfg 2 --json --repeats 5
    run 120 "$RT" bench --providers cuda --batch 16 --cfg 2 --json --repeats 5 --precision fp16
    local dir=/root/s64q
    mkdir -p "$dir"
    say "s64: init, export (fp32, fp16), check on cuda, bench at batch 16"
    run 120 "$ITARFLOW" init --model-config benches/configs/s64.json --out "$dir/s64.safetensors"
    run 300 "$ITARFLOW" export --ckpt "$dir/s64.safetensors" --out "$dir/pkg" --precision both --cfg 2
    timeout 240 "$RT" check --model "$dir/pkg" --providers cuda --json > /tmp/check_s64.json 2>> "$log"
    summarize_check /tmp/check_s64.json
    run 200 "$RT" bench --model "$dir/pkg" --providers cuda --batch 16 --cfg 2 --json --repeats 3
    run 200 "$RT" bench --model "$dir/pkg" --providers cuda --batch 16 --cfg 2 --json --repeats 3 --precision fp16
    grep '^{' "$log" > "$out/bench.jsonl"
}

stage_loops() {
    load_env
    say "seeded samples: --cuda-graphs loop against step (both CUDA, IEEE fp32), and mixed precision"
    local g
    for g in step loop; do
        run 120 "$RT" sample --provider cuda --seed 1 --num 32 --cfg 2 --cuda-graphs "$g" --output "/tmp/x_$g.npz" --json
    done
    run 120 "$RT" sample --provider cuda --seed 1 --num 32 --cfg 2 --precision mixed --output /tmp/x_mixed.npz --json
    python3 - 2>&1 <<'PY' | tee -a "$log"
import numpy as n
x = {k: n.load(f"/tmp/x_{k}.npz")["x"] for k in ("step", "loop", "mixed")}
print("max |loop - step|", float(abs(x["loop"] - x["step"]).max()), "max |mixed - step|", float(abs(x["mixed"] - x["step"]).max()))
PY
    say "bench: demo package, CFG 2, per-run graphs (step) against whole loops (loop)"
    local b
    for b in 16 256; do
        for g in step loop; do
            run 120 "$RT" bench --providers cuda --batch "$b" --cfg 2 --json --repeats 5 --cuda-graphs "$g"
        done
    done
    for p in fp16 mixed; do
        for g in step loop; do
            run 120 "$RT" bench --providers cuda --batch 256 --cfg 2 --json --repeats 5 --precision "$p" --cuda-graphs "$g"
        done
    done
    grep '^{' "$log" > "$out/bench.jsonl"
}

stage_cpu() {
    load_env
    say "bench: demo package on the CPU providers, $(nproc) cores, CFG 2"
    local b
    for b in 16 64; do
        run 300 "$RT" bench --providers tract,cpu --batch "$b" --cfg 2 --json --repeats 3
    done
    # tract as the same CPU without AVX-512 would run it (the AVX2 matrix tile and tract's AVX2
    # kernels; the JSON's cpu_kernels says which ran).
    say "bench: tract as an AVX2 CPU (TRACT_CPU_ISA), batch 16"
    TRACT_CPU_ISA=-avx512f,-avx512vnni,-avx512fp16,-amx-int8,-amx-bf16 run 300 "$RT" bench --providers tract --batch 16 --cfg 2 --json --repeats 3
    # tract without the row ops of 2026-12-06 (LayerNorm, the adjoints, the broadcast sums), in
    # alternation with them: what they buy on this host's CPU (cpu_kernels names the rewrites).
    say "bench: tract with and without its row ops, batch 16, alternating"
    local i
    for i in 1 2; do
        run 300 "$RT" bench --providers tract --batch 16 --cfg 2 --json --repeats 3
        ITARFLOW_TRACT_REWRITES=-gelu_grads,-layer_norm_grads,-layer_norms,-broadcasts run 300 "$RT" bench --providers tract --batch 16 --cfg 2 --json --repeats 3
    done
    grep '^{' "$log" > "$out/bench.jsonl"
}

stage_serve() {
    load_env
    local pad
    for pad in auto off; do
        say "serve: demo package on ${SERVE_PROVIDER:-cuda}, --pad-batches $pad, 96 requests of 1 to 12 images from 8 clients"
        "$RT" serve --provider "${SERVE_PROVIDER:-cuda}" --port 0 --pad-batches "$pad" --max-batch 64 2> "$out/serve_$pad.log" &
        local pid=$! addr=""
        for _ in $(seq 600); do
            addr=$(sed -n 's/^listening on http:\/\///p' "$out/serve_$pad.log" | head -1)
            [ -n "$addr" ] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
            sleep 0.2
        done
        timeout 300 python3 - "$addr" <<'EOF3' 2>&1 | tee -a "$log"
import json, sys, threading, time, urllib.request
addr = sys.argv[1]
def post(n, seed):
    body = json.dumps({"inputs": [{"name": "class", "shape": [n], "datatype": "INT64", "data": [seed % 10] * n},
                                  {"name": "seed", "shape": [1], "datatype": "INT64", "data": [seed]}]}).encode()
    r = urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v2/models/fmnist/infer", body, {"Content-Type": "application/json"}), timeout=300)
    return len(json.loads(r.read())["outputs"][0]["data"]) // 784
done, errors = [], []
def client(c):
    for r in range(12):
        k = c * 12 + r
        try:
            done.append(post(1 + k % 12, k))
        except Exception as e:
            errors.append(str(e))
t = time.perf_counter()
threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
[x.start() for x in threads]; [x.join() for x in threads]
dt = time.perf_counter() - t
print(f"{len(done)} requests, {sum(done)} images in {dt:.2f} s: {sum(done) / dt:.1f} images/s; {len(errors)} errors {errors[:2]}")
m = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
print("\n".join(l for l in m.splitlines() if l.startswith(("itarflow_requests_total", "itarflow_batch_images_count", "itarflow_batch_images_sum"))))
EOF3
        kill "$pid"; wait "$pid"
        grep -E "batching|ERROR|error" "$out/serve_$pad.log" | head -5 | tee -a "$log"
    done
}

# ncu times each kernel of a window (after the first PROFILE_SKIP launches, PROFILE_COUNT of
# them: a few phase-1 steps and Euler steps of the demo at batch 256), one replay each.
stage_profile() {
    load_env
    local ncu
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    if [ -z "$ncu" ]; then
        say "profile: no ncu on this machine"
        return 0
    fi
    say "profile: $ncu over the demo's sampling, batch 256, CFG 2, CUDA graphs off"
    run 400 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
        --launch-skip "${PROFILE_SKIP:-20000}" --launch-count "${PROFILE_COUNT:-3000}" \
        --log-file "$out/ncu.csv" "$RT" sample --provider cuda --num 256 --cfg 2 --no-cuda-graphs --output /tmp/x_profile.npz
    python3 - "$out/ncu.csv" <<'EOF2' 2>&1 | tee "$out/kernels.txt" | tee -a "$log"
import csv, collections, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
name, unit, value = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
total = collections.defaultdict(lambda: [0, 0.0])
for r in rows[1:]:
    t = float(r[value].replace(",", "")) * scale.get(r[unit], 1.0)
    total[r[name][:90]][0] += 1
    total[r[name][:90]][1] += t
all_us = sum(t for _, t in total.values())
print(f"{sum(c for c, _ in total.values())} kernels, {all_us / 1e3:.2f} ms of GPU time")
for k, (c, t) in sorted(total.items(), key=lambda kv: -kv[1][1])[:40]:
    print(f"{t / all_us * 100:5.1f}% {t:10.1f} us {c:6d} x {t / c:7.2f} us  {k}")
EOF2
}

[ $# -gt 0 ] || { sed -n "2,33p" "$0"; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        stash) stage_stash "$2"; shift 2 ;;
        setup|demo|s64|quick|loops|cpu|serve|profile) "stage_$1"; shift ;;
        *) echo "unknown stage $1"; exit 2 ;;
    esac
done

#!/usr/bin/env bash
# Burn's Vulkan backend on an NVIDIA GPU host without network: what the driver offers for Vulkan,
# the parity test (tests/vulkan_tests.rs), and training steps/s (bench-train).
#
# Prepare here:  bash scripts/gpu_vulkan.sh pack DIR   (vulkan and wgpu builds of `itarflow` and
#                the test, stripped and xz-compressed, with the Vulkan loader and glvnd's
#                libGLdispatch)
# Run there, one call per part of DIR (a call carries at most 64 MiB with the checkout):
#   bash scripts/gpu_vulkan.sh stage DIR/pN     copy what this call carried to /tmp/vk, unpacked
#   bash scripts/gpu_vulkan.sh run /tmp/vk OUT SECONDS [probe] [parity] [bench] [train]
#   (stops itself within SECONDS; train: the demo config at batch 256 for the time left, its weights,
#   log and last grid written to OUT/run)
# BACKEND=wgpu runs the `wgpu` build instead (Burn's kernels as WGSL, compiled to SPIR-V by wgpu's
# naga; part p4) where cubecl's own SPIR-V (the `vulkan` build, p1 and p2) fails on the driver.
# (cubecl 0.11.3's SPIR-V for shared memory is invalid on devices without
# VK_KHR_workgroup_memory_explicit_layout: docs/upstream/cubecl-spirv-implicit-shared-memory.md;
# NVIDIA's drivers have the extension, so the `vulkan` build is expected to run there.)
# p1 (loader libraries) is staged either way.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?pack DIR | run DIR OUT [SECONDS]}
kit=${2:?kit directory}

if [[ $mode == pack ]]; then
    # Four parts, one per call: p1 the vulkan itarflow build and libraries, p2 its parity test,
    # p3 the training images, p4 the wgpu build of both.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/itarflow-target}"
    set -e
    mkdir -p "$kit/p1/lib/x11" "$kit/p2" "$kit/p3/fmnist" "$kit/p4"
    # The same output paths serve both features: each build is copied out before the next.
    build() {
        local feature=$1 bin_out=$2 test_out=$3
        cargo build --release --features "$feature" --bin itarflow
        strip -o "$bin_out" "$CARGO_TARGET_DIR/release/itarflow"
        local test_bin
        test_bin=$(cargo test --release --features "$feature" --test vulkan_tests --no-run --message-format=json 2>/dev/null \
            | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="vulkan_tests" and m.get("executable"): print(m["executable"])')
        strip -o "$test_out" "$test_bin"
        xz -T2 -9e -f "$bin_out" "$test_out"
    }
    build vulkan "$kit/p1/itarflow" "$kit/p2/vulkan_tests"
    build wgpu "$kit/p4/itarflow-wgpu" "$kit/p4/vulkan_tests-wgpu"
    # The Vulkan loader, and glvnd's dispatch library that NVIDIA's libGLX_nvidia (the Vulkan ICD)
    # links against; hosts that install only the loader lack the latter. libGLX_nvidia's other
    # needs (X11 client libraries) in case the host lacks them too: `run` prints what is still
    # missing (ldd), and these sit last on the library path.
    lib=/usr/lib/x86_64-linux-gnu
    cp -L $lib/libvulkan.so.1 $lib/libGLdispatch.so.0 "$kit/p1/lib/"
    for l in libX11.so.6 libXext.so.6 libxcb.so.1 libXau.so.6 libXdmcp.so.6 libbsd.so.0 libmd.so.0; do
        [[ -e $lib/$l ]] && cp -L "$lib/$l" "$kit/p1/lib/x11/"
    done
    gunzip -c /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz | xz -T2 -9e > "$kit/p3/fmnist/train-images-idx3-ubyte.xz"
    gunzip -c /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz > "$kit/p3/fmnist/train-labels-idx1-ubyte"
    du -sh "$kit"/p*
    exit 0
fi

if [[ $mode == stage ]]; then
    mkdir -p /tmp/vk
    cp -r "$kit"/. /tmp/vk/
    for f in /tmp/vk/*.xz /tmp/vk/*/*.xz; do [[ -e $f ]] && xz -d -f "$f"; done
    chmod +x /tmp/vk/itarflow* /tmp/vk/vulkan_tests* 2>/dev/null
    ls -la /tmp/vk
    exit 0
fi

out=${3:?output directory}
budget=${4:-360}
shift 4
parts=" $* "
want() { [[ $parts == *" $1 "* ]]; }
backend=${BACKEND:-vulkan}
case $backend in
    vulkan) bin="$kit/itarflow" tests="$kit/vulkan_tests" ;;
    wgpu) bin="$kit/itarflow-wgpu" tests="$kit/vulkan_tests-wgpu" ;;
    *) echo "BACKEND is vulkan or wgpu, not $backend" >&2; exit 2 ;;
esac
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
mkdir -p "$out"
exec > >(tee -a "$out/vulkan_log.txt") 2>&1
echo "== $(date -u) host (backend $backend)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
uname -r; grep PRETTY /etc/os-release

echo "== driver files for Vulkan"
find /usr /etc /opt /lib /lib64 -xdev \( -name 'nvidia_icd*.json' -o -name 'nvidia_layers*.json' \
    -o -name 'libGLX_nvidia.so*' -o -name 'libnvidia-glcore.so*' -o -name 'libnvidia-glvkspirv.so*' \
    -o -name 'libnvidia-gpucomp.so*' -o -name 'libGLdispatch.so*' -o -name 'libvulkan.so*' -o -name 'libEGL_nvidia.so*' \) \
    2>/dev/null | sort
glx=$(find /usr /lib /opt -xdev -name 'libGLX_nvidia.so.0' 2>/dev/null | head -1)
icd=$(find /usr/share/vulkan /etc/vulkan /usr/local/nvidia /usr/local/share -name 'nvidia_icd*.json' 2>/dev/null | head -1)
echo "libGLX_nvidia: ${glx:-none}; ICD manifest: ${icd:-none}"
[[ -n $icd ]] && cat "$icd"

export LD_LIBRARY_PATH="$kit/lib:${LD_LIBRARY_PATH:-}"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib "$kit/lib/x11"; do [[ -d $d ]] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"; done
if [[ -n $glx ]]; then
    echo "== libraries libGLX_nvidia needs that are missing"
    ldd "$glx" | grep -i "not found" || echo "(none)"
    if [[ -z $icd ]]; then
        icd=/tmp/vk/nvidia_icd.json
        printf '{"file_format_version":"1.0.1","ICD":{"library_path":"%s","api_version":"1.4.0"}}\n' "$glx" > "$icd"
        echo "wrote $icd"
    fi
fi
[[ -n $icd ]] && export VK_ICD_FILENAMES="$icd" VK_DRIVER_FILES="$icd"

if want probe; then
    echo "== probe: open the Vulkan device, a matmul and a sum read back"
    VK_LOADER_DEBUG=error,warn timeout 60 "$bin" --device "$backend" info --ckpt models/fmnist/model.safetensors
    echo "probe exit $?"
fi

if want parity; then
    echo "== parity test (left $(left) s)"
    # The test finds its fixtures through the path it was built in.
    mkdir -p /work && { [[ -e /work/main ]] || ln -s "$PWD" /work/main; }
    timeout $(( $(left) - 5 )) "$tests" --nocapture --test-threads 1
    echo "parity exit $?"
fi

bench() {
    local cfg=$1 batch=$2 steps=$3
    local need=$((steps * 3 + 30))
    (( $(left) > need )) || { echo "skip $cfg b$batch: $(left) s left"; return; }
    echo "== bench-train $cfg batch $batch (left $(left) s)"
    timeout $(( $(left) - 5 )) "$bin" --device "$backend" bench-train --model-config "$cfg" \
        --batch-size "$batch" --steps "$steps" --warmup-steps 3 --out "$out/bench_train_$backend.jsonl"
}
if want bench; then
    bench models/fmnist/model.json 256 20
    bench models/fmnist/model.json 16 20
    bench benches/configs/s64.json 16 10
    bench benches/configs/s64.json 64 10
fi
want train || exit 0

# The demo config trained at batch 256 for the time left, a cosine schedule sized from the
# measured steps/s so that it ends inside the budget.
sps=$(python3 -c "import json
rows=[json.loads(l) for l in open('$out/bench_train_$backend.jsonl')]
print(next(r['steps_per_second'] for r in rows if r['batch_size']==256 and 'fmnist' in r['model']))" 2>/dev/null)
secs=$(( $(left) - 40 ))
if [[ -n $sps ]] && (( secs > 60 )); then
    steps=$(python3 -c "print(int($sps * $secs * 0.8))")
    echo "== train the demo config: $steps steps at batch 256 ($sps steps/s measured, $secs s left)"
    timeout $(( $(left) - 10 )) "$bin" --device "$backend" train --out-dir /tmp/vk/run \
        --model-config models/fmnist/model.json --data-dir "$kit/fmnist" --steps "$steps" --batch-size 256 \
        --lr 1e-3 --min-lr 1e-5 --warmup 200 --ema 0.999 --grad-clip 1.0 --label-dropout 0.1 --seed 0 \
        --checkpoint-every 250 --sample-every 0 --eval-every 0 --log-every 50 \
        --max-minutes "$(python3 -c "print(($(left) - 30) / 60)")"
    echo "train exit $?"
    # What comes back (at most 8 files): the EMA weights, the log and the last grid.
    mkdir -p "$out/run"
    cp /tmp/vk/run/model.safetensors /tmp/vk/run/metrics.jsonl "$out/run/" 2>/dev/null
    last=$(ls /tmp/vk/run/samples/*.png 2>/dev/null | tail -1)
    [[ -n $last ]] && cp "$last" "$out/run/"
fi
echo "== done $(date -u), $(left) s of $budget left"

#!/usr/bin/env bash
# cubecl-spirv 0.11.3 with the fix of docs/upstream/cubecl-spirv-implicit-shared-memory.md, for
# Burn's `vulkan` feature on Vulkan devices without VK_KHR_workgroup_memory_explicit_layout (Mesa's
# lavapipe): its `lower_shared_implicit` declares a shared array with the types of the variable and
# of its address exchanged, which gives invalid SPIR-V that lavapipe crashes on. Until cubecl
# releases a fix, this makes a fixed copy of the crate from cargo's registry (the two arguments
# exchanged; nothing of it is kept in this repository) and prints the `--config` argument that
# builds against it:
#
#   cargo test --release --features vulkan --test vulkan_tests --config "$(bash scripts/cubecl_fix.sh)"
#
# The copy lives outside the checkout (ITARFLOW_PATCHED, default ~/.cache/itarflow-patched), made
# once: an unchanged copy keeps cargo's fingerprints, so later builds reuse their artifacts.
# Cargo may record the patch in Cargo.lock while it builds: .ci/run puts the file back after.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.11.3
# Cargo unpacks a crate's source when it first builds it.
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cubecl-spirv-$version 2>/dev/null | head -1)
if [[ -z $registry ]]; then
    cargo check -q --features vulkan >&2
    registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cubecl-spirv-$version 2>/dev/null | head -1)
fi
[[ -n $registry ]] || { echo "cubecl_fix.sh: cubecl-spirv $version is not in cargo's registry (is Cargo.lock's cubecl another version?)" >&2; exit 1; }
out=${ITARFLOW_PATCHED:-$HOME/.cache/itarflow-patched}/cubecl-spirv-$version
stamp="fix 1: lower_shared_implicit declares the array, addresses the pointer"
if [[ ! -f $out/.itarflow-fix || $(cat "$out/.itarflow-fix") != "$stamp" ]]; then
    rm -rf "$out"
    mkdir -p "$(dirname "$out")"
    cp -r "$registry" "$out.tmp"
    f=$out.tmp/src/ops/memory.rs
    # The variable is declared with the array's type (`ty`), its address has the pointer's
    # (`value_ty`); each line must be there exactly once, or the crate is not the one this fixes.
    fix() {
        local n
        n=$(grep -cF "$1" "$f" || true)
        [[ $n -eq 1 ]] || { echo "cubecl_fix.sh: '$1' is in $f $n times: not the cubecl-spirv $version this fixes" >&2; exit 1; }
        sed -i "s/$1/$2/" "$f"
    }
    fix 'GlobalVariableOp::new(ctx, value_ty, StorageClass::Workgroup' 'GlobalVariableOp::new(ctx, ty, StorageClass::Workgroup'
    fix 'AddressOfOp::new(ctx, ty, name)' 'AddressOfOp::new(ctx, value_ty, name)'
    echo "$stamp" > "$out.tmp/.itarflow-fix"
    mv "$out.tmp" "$out"
fi
echo "patch.crates-io.cubecl-spirv.path=\"$out\""

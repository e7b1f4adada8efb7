#!/usr/bin/env bash
# Installs what the toolkit's tests and commands need beyond the Rust toolchain. Idempotent.
set -euo pipefail
cargo --version
rustc --version

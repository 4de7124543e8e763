#!/usr/bin/env bash
# Rebuilds ../sdk_filter.wasm (needs `rustup target add wasm32-unknown-unknown`).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --target wasm32-unknown-unknown --target-dir target
cp target/wasm32-unknown-unknown/release/sdk_filter.wasm ../sdk_filter.wasm
ls -l ../sdk_filter.wasm

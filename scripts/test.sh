#!/usr/bin/env bash
# The single test command: lint, build, and run every test in the workspace.
# Any failure stops the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "install test dependencies"
scripts/install-test-deps.sh
scripts/install-qemu.sh

step "build the QEMU test guest image"
scripts/build-guest-image.sh target/guest-image

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release --bins"
cargo build --release --bins

step "cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast

step "all tests passed"

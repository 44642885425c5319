#!/usr/bin/env bash
# The test suite: set up, check formatting and lints, run every test of the workspace
# (optimised: see [profile.dev] in Cargo.toml), and check the release binaries run without
# LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets
echo "== doc tests"
cargo test --workspace --doc --quiet

#!/usr/bin/env bash
# The test suite: set up, check formatting and lints, run every test of the workspace
# (optimised: see [profile.dev] in Cargo.toml), and check the release binaries run without
# LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Python cross-checks must run, never skip, in a full test run (see the `peers` crate).
export CI="${CI:-1}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# The test binaries run BLAS-heavy code in their own processes, so they get the OpenBLAS kernels
# the gbtd CLI would choose at start-up for this CPU (gbtd::openblas::coretype: only when
# OpenBLAS's detection fell back to an older family; a user's OPENBLAS_CORETYPE is kept).
# GBTD_OPENBLAS_CORETYPE marks the choice as gbtd's: the Python cross-checks (the `peers` test crate) drop
# it, so numpy's own OpenBLAS still chooses for itself.
if [ -z "${OPENBLAS_CORETYPE+set}" ]; then
    coretype="$(cargo run --quiet -p gbtd --bin gbtd -- blas-info --coretype)"
    if [ -n "$coretype" ]; then
        echo "OpenBLAS kernels for the tests: OPENBLAS_CORETYPE=$coretype (chosen by gbtd for this CPU)"
        export OPENBLAS_CORETYPE="$coretype" GBTD_OPENBLAS_CORETYPE="$coretype"
    fi
fi
cargo test --workspace --all-targets
echo "== doc tests"
cargo test --workspace --doc --quiet
echo "== gbtd's Python package (pytest, against TensorLy, torch and torchvision)"
# scripts/setup.sh built and installed the package into .venv from this checkout.
.venv/bin/python -m pytest -q -p no:cacheprovider bindings/python/tests

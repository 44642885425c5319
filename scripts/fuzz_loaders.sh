#!/usr/bin/env bash
# Mutation-fuzz every file loader (PyTorch checkpoints in both formats, the restricted pickle
# reader, npy, npz, safetensors) for a while: the same mutators as `cargo test --test
# fuzz_loaders`, with a fresh seed, run for a time budget per loader family.
#
# Usage: scripts/fuzz_loaders.sh [MINUTES]      (default 5; each of the two families gets it)
#        GBTD_FUZZ_SEED=123 scripts/fuzz_loaders.sh 1   (replay the seed a failing run printed)
#
# A failure prints the case (loader, case number, mutator) and the seed to replay it with.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
  echo "error: MINUTES must be a positive whole number (got '$minutes'); e.g. scripts/fuzz_loaders.sh 10" >&2
  exit 2
fi
export LIBTORCH="${LIBTORCH:-$PWD/.venv/torch}"
export GBTD_FUZZ_SECONDS=$((minutes * 60))
exec cargo test -p gbtd --test fuzz_loaders -- --nocapture --test-threads 1

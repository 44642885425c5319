#!/usr/bin/env bash
# The main job: set up, build the release binaries, and run netgen on the paper's example
# configuration: it prints the architecture table, then trains the network on Fashion-MNIST
# (the Debian package installed by setup.sh). On a machine without CUDA, a run given no
# --epochs/--max-steps/--budget trains within a 10-minute budget; with CUDA it trains its full
# schedule. It ends with the test accuracy and the run directory (curves.png, metrics.csv,
# best.safetensors). Extra arguments replace the default ones (for example:
# --preset crunet_small --epochs 4 --no-augment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --quiet
if [ $# -eq 0 ]; then
  # 28×28 inputs give the 3-stage small-image layout; with no --depth netgen picks 9·6 + 2 = 56
  # (6 units per stage), so --share 6 makes every stage a CRU stage with one set of shared factors.
  set -- --R 32 --rank 4 --share 6
fi
exec target/release/netgen "$@"

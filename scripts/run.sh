#!/usr/bin/env bash
# The main job: set up, build the release binaries, and run netgen on the paper's example
# configuration. Extra arguments are passed to netgen (for example: --preset crunet56).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --quiet
if [ $# -eq 0 ]; then
  set -- --R 32 --rank 4 --share 6
fi
exec target/release/netgen "$@"

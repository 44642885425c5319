#!/usr/bin/env bash
# Training throughput of the three paths on this machine's CPU, side by side on the same network, batch
# and steps: `netgen train` (one process, all cores), `python -m netgen_torch.train` (one process) and
# `torchrun --nproc_per_node=2` (two gloo processes, one thread each). Prints the `img_per_s` of each
# run's --json summary (training steps only, data loading included, evaluation excluded).
#
#   bash scripts/bench_scale_out.sh [STEPS] [BATCH]     (default 60 steps of batch 64)
#
# The network is crunet_small at 28×28 with a first stride of 2 (363,386 parameters), on Fashion-MNIST.
# Run it on an otherwise idle machine: other jobs on the cores change the figures of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
BATCH=${2:-64}
bash scripts/setup.sh
cargo build --release -p netgen --quiet
cores=$(nproc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
target/release/netgen emit --preset crunet_small --input 28 --in-channels 1 --first-stride 2 --json > "$out/spec.json"
common=(--spec "$out/spec.json" --max-steps "$STEPS" --batch-size "$BATCH" --eval-samples 256 --quiet --json)
show() {
  .venv/bin/python -c "import json, sys; s = json.load(open(sys.argv[2])); print(f'{sys.argv[1]:44s} {s[\"img_per_s\"]:8.1f} img/s')" "$1" "$2"
}
target/release/netgen train "${common[@]}" --threads "$cores" --device cpu --out "$out/netgen" > "$out/netgen.json"
show "netgen train ($cores threads)" "$out/netgen.json"
PYTHONPATH=python .venv/bin/python -m netgen_torch.train "${common[@]}" --threads "$cores" --out "$out/py" > "$out/py.json"
show "netgen_torch.train, 1 process ($cores threads)" "$out/py.json"
PYTHONPATH=python .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m netgen_torch.train \
  "${common[@]}" --threads $(( cores > 1 ? cores / 2 : 1 )) --out "$out/ddp" > "$out/ddp.json" 2> "$out/ddp.err" \
  || { cat "$out/ddp.err" >&2; exit 1; }
show "torchrun, 2 gloo processes" "$out/ddp.json"

#!/usr/bin/env bash
# GPU check (a few minutes on a CUDA machine): trains the paper's configuration
# (netgen --R 32 --rank 4 --share 6 --depth 56, 7.7M parameters at 28×28) on Fashion-MNIST for a
# fixed number of steps, in float32 and with --amp, and prints the device name, the training
# throughput (images/s, data loading included) and the test accuracy of each run; then the same
# network, batch and steps under PyTorch DDP (`torchrun --nproc_per_node=G -m netgen_torch.train`,
# G = visible GPUs, one process per GPU), so that the img/s of both paths stand side by side.
#
#   bash scripts/gpu_check.sh [STEPS]      (default 400 steps of batch 128, about 0.85 epoch)
#
# Needs a CUDA GPU and the CUDA wheel of PyTorch in .venv (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}
bash scripts/setup.sh
cargo build --release -p netgen --quiet
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to PyTorch; nothing to check on this machine" >&2
  exit 1
fi
echo "device: $(.venv/bin/python -c 'import torch; print(torch.cuda.get_device_name(0))')"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gpus=$(.venv/bin/python -c 'import torch; print(torch.cuda.device_count())')
target/release/netgen emit --R 32 --rank 4 --share 6 --depth 56 --input 28 --in-channels 1 --classes 10 \
  --json > "$out/spec.json"
for mode in fp32 amp; do
  extra=()
  [ "$mode" = amp ] && extra=(--amp)
  target/release/netgen train --R 32 --rank 4 --share 6 --depth 56 --device cuda \
    --max-steps "$STEPS" --batch-size 128 --quiet --json --out "$out/$mode" "${extra[@]}" \
    > "$out/$mode.json"
  .venv/bin/python - "$mode" "$out/$mode.json" <<'PY'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
print(f"{mode:5s} {s['device']}: {s['img_per_s']:.0f} img/s (training, data loading included), "
      f"test top-1 {s['test_acc']:.2f}% after {s['steps']} steps ({s['epochs']:.2f} epochs), {s['seconds']:.0f} s in all")
PY
  PYTHONPATH=python .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
    -m netgen_torch.train --spec "$out/spec.json" --device cuda --max-steps "$STEPS" --batch-size 128 \
    --quiet --json --out "$out/torchrun-$mode" "${extra[@]}" > "$out/torchrun-$mode.json"
  .venv/bin/python - "torchrun $mode" "$out/torchrun-$mode.json" <<'PY'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
print(f"{mode:14s} {s['world_size']} × {s['device']}: {s['img_per_s']:.0f} img/s (training, data loading included), "
      f"test top-1 {s['test_acc']:.2f}% after {s['steps']} steps, {s['seconds']:.0f} s in all")
PY
done

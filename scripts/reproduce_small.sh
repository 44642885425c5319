#!/usr/bin/env bash
# The paper's ordering at small scale: ResNet, ResNeXt and CRU-Net of nearly equal parameter counts,
# trained on Fashion-MNIST with one recipe, several seeds each; then a Markdown + CSV table and a plot.
#
#   bash scripts/reproduce_small.sh [--quick] [--seeds N] [--epochs E] [--out DIR] [--threads N] [--device D]
#
#   --seeds N    seeds 0..N-1 per network (default 3)
#   --epochs E   epochs per run (default 3; the full sweep is 9 runs, about an hour on 2 idle cores)
#   --out DIR    output directory (default runs/reproduce_small, or runs/reproduce_small_quick)
#   --threads N  libtorch threads per run (default: netgen's, all cores)
#   --device D   netgen's --device (auto: CUDA when available)
#   --quick      plumbing check: 5 steps per run, 2 seeds, 256 test images (numbers are meaningless)
#
# The three networks (3-stage small-image layout, stem 32, stage widths 64/128/256, 3 pre-activation units
# per stage, first stage at stride 2; `netgen emit` with the same flags prints each table):
#   resnet   --R 1 --rank 18                      R = 1: Tucker-2 bottlenecks of width 18/36/72   366,958 params
#   resnext  --R 8 --rank 4                       8 groups of 4 channels (8×4d)                   360,490 params
#   cru      --R 8 --rank 4 --share 3 --cru-stages 1 --cru-width 80 --groups-eq-channels
#            the middle stage's 3 units share their first 1×1 and depthwise 3×3 (= netgen's crunet_small)
#                                                                                                 363,386 params
# Recipe for all: netgen's modern recipe (Nesterov SGD, lr 0.1, warm-up then cosine), batch 128, no augmentation.
#
# Each run writes DIR/runs/NAME-seedS/ (netgen's run directory) and DIR/runs/NAME-seedS.json (netgen's --json
# summary); a run whose .json exists is not trained again, so an interrupted sweep continues where it stopped.
# scripts/reproduce_small.py then writes DIR/results.md, DIR/results.csv, DIR/runs.csv and
# DIR/accuracy_vs_params.png.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

quick=0 seeds="" epochs=3 out="" threads="" device=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift ;;
    --epochs) epochs="${2:?--epochs needs a number}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --threads) threads="${2:?--threads needs a number}"; shift ;;
    --device) device="${2:?--device needs a value}"; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reproduce_small.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$seeds" ]; then seeds=$([ $quick -eq 1 ] && echo 2 || echo 3); fi
[[ "$seeds" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce_small.sh: --seeds must be a positive integer, got $seeds" >&2; exit 2; }
[ -n "$out" ] || out=$([ $quick -eq 1 ] && echo runs/reproduce_small_quick || echo runs/reproduce_small)

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "reproduce_small.sh: $PY missing; run bash scripts/setup.sh first" >&2; exit 1; }
if [ -n "${CRUNET_BIN_DIR:-}" ]; then
  NETGEN="$CRUNET_BIN_DIR/netgen"
  [ -x "$NETGEN" ] || { echo "reproduce_small.sh: CRUNET_BIN_DIR=$CRUNET_BIN_DIR has no netgen" >&2; exit 1; }
else
  echo "== cargo build --release -p netgen" >&2
  cargo build --release --quiet -p netgen
  NETGEN="$ROOT/target/release/netgen"
fi

COMMON=(--input 28 --in-channels 1 --classes 10 --depth 29 --widths 64,128,256 --stem-width 32 --preact
        --first-stride 2)
declare -A NET=(
  [resnet]="--R 1 --rank 18"
  [resnext]="--R 8 --rank 4"
  [cru]="--R 8 --rank 4 --share 3 --cru-stages 1 --cru-width 80 --groups-eq-channels"
)
ORDER=(resnet resnext cru)

if [ $quick -eq 1 ]; then
  LENGTH=(--max-steps 5 --eval-samples 256)
else
  LENGTH=(--epochs "$epochs")
fi
EXTRA=(--no-augment --device "$device" --quiet --json)
[ -z "$threads" ] || EXTRA+=(--threads "$threads")

mkdir -p "$out/runs"
# The recipe, for the table's caption.
{
  echo "netgen: $("$NETGEN" --version)"
  echo "common flags: ${COMMON[*]}"
  for n in "${ORDER[@]}"; do echo "$n: ${NET[$n]}"; done
  echo "training: ${LENGTH[*]} ${EXTRA[*]}"
  echo "quick: $quick"
} > "$out/sweep.txt"

total=$(( ${#ORDER[@]} * seeds )) i=0
for s in $(seq 0 $((seeds - 1))); do
  for n in "${ORDER[@]}"; do
    i=$((i + 1))
    name="$n-seed$s" json="$out/runs/$n-seed$s.json"
    if [ -s "$json" ]; then
      echo "[$i/$total] $name: done already ($json)" >&2
      continue
    fi
    echo "[$i/$total] $name: netgen train ${NET[$n]} --seed $s ${LENGTH[*]}" >&2
    rm -rf "$out/runs/$name"
    # shellcheck disable=SC2086  # NET entries are flag lists
    if ! "$NETGEN" train ${NET[$n]} "${COMMON[@]}" "${LENGTH[@]}" "${EXTRA[@]}" --seed "$s" \
        --out "$out/runs/$name" > "$json.tmp"; then
      rm -f "$json.tmp"
      echo "reproduce_small.sh: $name failed (netgen's error is above); the same command continues the sweep" >&2
      exit 1
    fi
    mv "$json.tmp" "$json"
  done
done

"$PY" scripts/reproduce_small.py "$out" $([ $quick -eq 1 ] && echo --quick)

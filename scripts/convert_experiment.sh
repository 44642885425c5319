#!/usr/bin/env bash
# The conversion experiment (issue 12 §2) on Fashion-MNIST: a small pre-activation ResNeXt trained
# for SRC_EPOCHS epochs, converted to a CRU-Net with share groups of SHARE units (netgen convert,
# BN statistics re-estimated), its test accuracy before fine-tuning and after FT_EPOCHS epoch(s) of
# fine-tuning, against the same CRU-Net trained from scratch for SRC_EPOCHS + FT_EPOCHS epochs.
# Prints a Markdown table (also written to OUT/results.md); the runs stay in OUT (default
# runs/convert_exp). notebooks/training.ipynb shows them with CONVERT_DIR=OUT.
#
#   bash scripts/convert_experiment.sh                     # defaults below (CPU: about 20 minutes)
#   NETGEN=target/debug/netgen SRC_EPOCHS=2 bash scripts/convert_experiment.sh
set -euo pipefail
cd "$(dirname "$0")/.."

NETGEN=${NETGEN:-target/release/netgen}
OUT=${OUT:-runs/convert_exp}
SRC_EPOCHS=${SRC_EPOCHS:-2}
FT_EPOCHS=${FT_EPOCHS:-1}
SHARE=${SHARE:-2}
THREADS=${THREADS:-1}
CALIB=${CALIB:-20}
# A small 3-stage ResNeXt (R = 4 groups, d* = 2·2^s, widths 32/64/128) at a quarter of the
# multiply-adds (first stride 2); pre-activation, so that it maps onto the CRU units.
ARCH=(--R 4 --rank 2 --depth 2,2,2 --widths 32,64,128 --stem-width 16 --first-stride 2 --preact)
RUN=(--batch-size 128 --no-augment --threads "$THREADS" --workers 1 --seed 0 --quiet --json)

if [[ ! -x $NETGEN ]]; then
    echo "build netgen first (cargo build --release -p netgen) or set NETGEN" >&2
    exit 1
fi
if [[ -e $OUT ]]; then
    echo "$OUT exists; remove it or set OUT" >&2
    exit 1
fi
mkdir -p "$OUT"
total=$((SRC_EPOCHS + FT_EPOCHS))

# The ResNeXt, and (in parallel) the CRU-Net from scratch for the same total number of epochs.
"$NETGEN" train "${ARCH[@]}" "${RUN[@]}" --epochs "$SRC_EPOCHS" --out "$OUT/resnext" >"$OUT/resnext.json" &
src_pid=$!
"$NETGEN" train "${ARCH[@]}" --share "$SHARE" "${RUN[@]}" --epochs "$total" --out "$OUT/cru_scratch" \
    >"$OUT/cru_scratch.json" &
scratch_pid=$!
wait "$src_pid"

"$NETGEN" convert --run "$OUT/resnext" --share "$SHARE" --out "$OUT/cru_converted" --calib-batches "$CALIB" \
    --threads "$THREADS" --json >"$OUT/convert.json"
"$NETGEN" eval --run "$OUT/cru_converted" --threads "$THREADS" --json >"$OUT/converted_eval.json"
"$NETGEN" train --resume "$OUT/cru_converted" --epochs "$FT_EPOCHS" --threads "$THREADS" --quiet --json \
    >"$OUT/finetune.json"
wait "$scratch_pid"

python3 - "$OUT" "$SRC_EPOCHS" "$FT_EPOCHS" <<'EOF' | tee "$OUT/results.md.tmp"
import csv, json, sys
out, src_e, ft_e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
j = lambda f: json.load(open(f"{out}/{f}"))
rx, conv, ev, ft, sc = j("resnext.json"), j("convert.json"), j("converted_eval.json"), j("finetune.json"), j("cru_scratch.json")
rows = list(csv.DictReader(open(f"{out}/cru_scratch/metrics.csv")))
by_epoch = {round(float(r["epoch"])): float(r["test_top1"]) for r in rows}
print("| network | epochs | parameters | test top-1 (%) | training s |")
print("|---|---|---|---|---|")
print(f"| ResNeXt (source) | {src_e} | {rx['params']} | {rx['test_acc']:.2f} | {rx['seconds']:.0f} |")
print(f"| CRU converted, before fine-tuning | {src_e} + 0 | {conv['params']} | {ev['top1']:.2f} | – |")
print(f"| CRU converted + fine-tuning | {src_e} + {ft_e} | {conv['params']} | {ft['test_acc']:.2f} | {ft['seconds']:.0f} |")
for e in sorted(by_epoch):
    secs = sc['seconds'] if e == src_e + ft_e else None
    print(f"| CRU from scratch | {e} | {sc['params']} | {by_epoch[e]:.2f} | {'' if secs is None else f'{secs:.0f}'} |")
errs = [e for g in conv["groups"] for e in g["rel_errors"]]
print()
print(f"Per-unit relative errors of the collective factorization: {', '.join(f'{e:.3f}' for e in errs)}")
EOF
mv "$OUT/results.md.tmp" "$OUT/results.md"

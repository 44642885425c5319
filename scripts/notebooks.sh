#!/usr/bin/env bash
# Executes every notebook in notebooks/ headlessly and fails if a cell fails.
#
#   bash scripts/notebooks.sh            execute in place: the notebooks keep their new outputs (commit them)
#   bash scripts/notebooks.sh --quick    tiny training runs (NOTEBOOK_QUICK=1), executed copies go to a
#                                        temporary directory, the committed notebooks are left untouched
#   bash scripts/notebooks.sh [--quick] notebooks/table1.ipynb ...   only these notebooks
#
# The notebooks call the release binaries gbtd and netgen through subprocess. They are built here with
# `cargo build --release -p gbtd -p netgen` (a no-op when up to date) unless CRUNET_BIN_DIR names a directory
# that already holds both. Python is the project's .venv (scripts/setup.sh installs nbconvert, ipykernel,
# matplotlib there from requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

quick=0
notebooks=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "notebooks.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    *) [ -f "$arg" ] || { echo "notebooks.sh: no such notebook: $arg" >&2; exit 2; }
       notebooks+=("$arg") ;;
  esac
done
if [ ${#notebooks[@]} -eq 0 ]; then
  notebooks=(notebooks/*.ipynb)
fi

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "notebooks.sh: $PY missing; run bash scripts/setup.sh first" >&2; exit 1; }
"$PY" -c 'import nbconvert, ipykernel, matplotlib' 2>/dev/null \
  || { echo "notebooks.sh: nbconvert/ipykernel/matplotlib missing in .venv; run bash scripts/setup.sh" >&2; exit 1; }

if [ -n "${CRUNET_BIN_DIR:-}" ]; then
  for b in gbtd netgen; do
    [ -x "$CRUNET_BIN_DIR/$b" ] || { echo "notebooks.sh: CRUNET_BIN_DIR=$CRUNET_BIN_DIR has no $b" >&2; exit 1; }
  done
  CRUNET_BIN_DIR=$(cd "$CRUNET_BIN_DIR" && pwd)
else
  echo "== cargo build --release -p gbtd -p netgen" >&2
  cargo build --release --quiet -p gbtd -p netgen
  CRUNET_BIN_DIR="$ROOT/target/release"
fi
export CRUNET_BIN_DIR CRUNET_ROOT="$ROOT" NOTEBOOK_QUICK=$quick
# ipykernel's inline matplotlib backend embeds the plots as PNG; a display is not needed.
unset MPLBACKEND

out_args=(--inplace)
if [ $quick -eq 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  out_args=(--output-dir "$tmp")
fi

failed=0
for nb in "${notebooks[@]}"; do
  start=$SECONDS
  echo "== $nb$( [ $quick -eq 1 ] && echo ' (quick)')" >&2
  if "$PY" -m jupyter nbconvert --to notebook --execute "${out_args[@]}" \
       --ExecutePreprocessor.timeout=3600 --ExecutePreprocessor.kernel_name=python3 \
       --log-level=WARN "$nb"; then
    echo "   ok ($((SECONDS - start)) s)" >&2
  else
    echo "notebooks.sh: $nb failed (the cell's traceback is above)" >&2
    failed=1
  fi
done
exit $failed

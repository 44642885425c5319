#!/usr/bin/env bash
# Times the `gbtd decompose` process against TensorLy 0.10 on the four cases of issue 3 and prints the table
# (see scripts/compare_tensorly.py for the cases, the thread settings and the options).
# Usage: scripts/compare_tensorly.sh [--threads N] [--repeat K] [--cases a,b] [--no-build]
#        [--unset-openblas-coretype] [--gbtd-env KEY=VALUE ...] [--verbose]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
if [ ! -x "$python" ]; then
    echo "error: $python not found; run scripts/setup.sh first" >&2
    exit 1
fi
exec "$python" "$root/scripts/compare_tensorly.py" "$@"

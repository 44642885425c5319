#!/usr/bin/env bash
# Idempotent set-up, run first by scripts/run.sh and scripts/test.sh (and so by .ci/run).
#
#  1. Debian packages: OpenBLAS/LAPACK for ndarray-linalg, Fashion-MNIST, and the build tools.
#  2. A project-local virtualenv `.venv` with the pinned Python peers from requirements.txt
#     (torch 2.13.0 is the libtorch that tch 0.26 links against).
#  2c. gbtd's Python package (bindings/python), built by maturin and installed into .venv.
#  3. `.venv/torch`, a stable symlink to the wheel's `site-packages/torch`; `.cargo/config.toml`
#     points LIBTORCH at it, and build scripts bake its `lib/` into the binaries' rpath.
#
# Quick (about a second) when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { [ -n "${QUIET_SETUP:-}" ] || echo "setup: $*" >&2; }

# --- 1. Debian packages ----------------------------------------------------------------------
# fonts-dejavu-core: the TrueType font netgen draws the text of curves.png with.
APT_PKGS=(libopenblas-dev dataset-fashion-mnist fonts-dejavu-core pkg-config gcc g++ make)
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  APT_PKGS+=(python3-venv)
fi
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. virtualenv with the pinned peers -----------------------------------------------------
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating .venv with the pinned Python peers (torch is a large download; about a minute)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

# --- 2b. the repository's own Python package netgen_torch (python/), editable --------------------
# Pure Python on top of the pinned torch: no download (--no-deps, and the venv's own setuptools,
# >= 77 as a dependency of torch, builds it: --no-build-isolation). Reinstalled when python/pyproject.toml or the checkout's
# location changes; code edits need no reinstall (editable). A .venv that is a symlink belongs to
# another checkout and is not re-pointed at this one (tests import this checkout's python/ first).
pkg_stamp=.venv/.netgen_torch.stamp
pkg_want="$ROOT $(sha256sum python/pyproject.toml | cut -d' ' -f1)"
if [ -L .venv ]; then
  log "netgen_torch: .venv is shared with another checkout; not re-pointing its install (use PYTHONPATH=$ROOT/python)"
elif [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ] \
  || ! .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("netgen_torch") is None)' 2>/dev/null; then
  log "installing netgen_torch (editable, from python/)"
  # pip's output (setuptools' generic editable-install warning) is shown only when it fails.
  if ! out=$(.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e python/ 2>&1); then
    echo "$out" >&2
    echo "setup: installing netgen_torch from python/ failed (see above)" >&2
    exit 1
  fi
  echo "$pkg_want" > "$pkg_stamp"
fi

# --- 2c. gbtd's Python package (bindings/python), a release build by maturin --------------------------
# maturin (pinned in requirements.txt) builds the PyO3 extension against this checkout's gbtd crate
# into target/wheels, and pip installs the wheel into .venv. Rebuilt when the sources it is made of
# (gbtd/, bindings/python/, the lock file) change: the stamp is a hash of their tracked contents.
if [ -L .venv ]; then
  log "gbtd (Python): .venv is shared with another checkout; not reinstalling it from this one"
else
  py_want=$( (git ls-files -s gbtd bindings/python Cargo.lock Cargo.toml 2>/dev/null; git diff HEAD -- gbtd bindings/python Cargo.lock Cargo.toml 2>/dev/null) | sha256sum | cut -d' ' -f1)
  py_stamp=.venv/.gbtd_python.stamp
  if [ "$(cat "$py_stamp" 2>/dev/null)" != "$py_want" ] \
    || ! .venv/bin/python -c 'import gbtd._gbtd' >/dev/null 2>&1; then
    log "building gbtd's Python package (maturin, release; a few minutes the first time)"
    rm -f target/wheels/gbtd-*.whl
    if ! out=$(cd bindings/python && ../../.venv/bin/maturin build --release --quiet --auditwheel skip \
        --interpreter ../../.venv/bin/python --out ../../target/wheels 2>&1); then
      echo "$out" >&2
      echo "setup: building gbtd's Python package failed (see above)" >&2
      exit 1
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall target/wheels/gbtd-*.whl
    echo "$py_want" > "$py_stamp"
  fi
fi

# --- 3. stable libtorch path -----------------------------------------------------------------
torch_dir=$(.venv/bin/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')
if [ "$(readlink .venv/torch 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" .venv/torch
fi
[ -f .venv/torch/lib/libtorch_cpu.so ] || { echo "setup: $torch_dir/lib/libtorch_cpu.so missing; delete .venv and rerun" >&2; exit 1; }
log "ready (libtorch at $ROOT/.venv/torch -> $torch_dir)"

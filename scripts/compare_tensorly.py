#!/usr/bin/env python3
"""Time gbtd against TensorLy 0.10 on the same tensors: `gbtd decompose` as a whole process, and
gbtd's Python package (`gbtd.tucker`, `gbtd.partial_tucker`, `gbtd.parafac`) called in this same
process on the same arrays.

Cases (every tensor float64, generated with a fixed seed and written as .npy):

  tucker2-kernel  Tucker-2 (partial Tucker on modes 0,1), rank (128,128), of a (512,512,3,3) kernel, 10 iterations
  cp-kernel       CP rank 64 of a (256,256,3,3) kernel, 25 iterations
  tucker-lowrank  Tucker rank (10,10,10) of a 100^3 low-rank-plus-noise tensor, 20 iterations
  cp-lowrank      CP rank 10 of a 100^3 low-rank-plus-noise tensor, 100 iterations

The kernels are i.i.d. normal with He scaling (std sqrt(2 / fan_in)), like freshly initialised conv
weights. The low-rank tensors are an exact Tucker (resp. CP) tensor of the target rank plus Gaussian
noise of 10% of its norm.

TensorLy runs `partial_tucker`, `tucker` and `parafac` with init='svd', tol=0 and a fixed
n_iter_max (random_state=0 where it fills columns beyond a mode's dimension). gbtd runs
`gbtd decompose FILE --method ... --rank ... --max-iter N --tol 0 --init svd --json --quiet` with the
release binary, which is (re)built with `cargo build --release -p gbtd` unless --no-build.

Times: TensorLy is timed around the call (time.perf_counter; the tensor is already in memory).
gbtd is timed as a whole process, the wall time of `gbtd decompose ...` from start to exit: process
start-up, reading the .npy file, a possible run of itself again with other OpenBLAS kernels (see
"Kernels" below), the decomposition, the report and writing the factors (--out, needed for the error
check). The column "gbtd dec s" is gbtd's own JSON field `seconds` (the decomposition alone), for
reference. With --repeat K each side runs K times, the two sides alternating (so that both see the
same load on a shared machine); "speedup" compares the fastest run of each side (TensorLy call vs
gbtd process) and "median" is the median over the K pairs of the ratio of their times. Each run starts after a
0.5 s pause, so that no OpenBLAS thread of the previous run is still spinning. Both
relative errors ||X - X_hat|| / ||X|| are recomputed here by numpy from the reconstructions
(TensorLy's via tl.tucker_to_tensor / cp_to_tensor / multi_mode_dot, gbtd's via
`gbtd reconstruct FACTORS --out X.npy`).

Threads: both sides run with the same BLAS thread count: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and
MKL_NUM_THREADS are set to --threads (default: the number of CPUs) before numpy is imported, and the
gbtd child process inherits the same environment. On some machines OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are set (older OpenBLAS builds misbehave without them); they can slow numpy's
OpenBLAS. They are left as found by default, for both sides alike, and reported in the header; with
--unset-openblas-coretype the script re-executes itself with both removed, again for both sides.

Kernels: the header names the OpenBLAS kernel family each side runs: numpy's (its bundled OpenBLAS,
asked directly) and gbtd's (`gbtd blas-info`, which says whether gbtd chose it because OpenBLAS's
own detection fell back to older kernels). --gbtd-env KEY=VALUE (repeatable) sets a variable for the
gbtd processes only, e.g. OPENBLAS_CORETYPE=Prescott to time the kernels an unrecognised CPU falls
back to, or GBTD_PRETEND_OPENBLAS_CORE=Prescott to time gbtd's fallback path (it then runs itself
again with the kernels matching the CPU).

In-process table (--mode in-process or both): TensorLy's function and gbtd's function of the same name
are called in this process on the same NumPy array, alternating, --repeat times each; both are timed
around the call; "median" is the median over the pairs of the ratio of their times. gbtd's threads are
set to --threads (gbtd.set_num_threads). The header names the CPU (vendor, model name, family/model)
and the OpenBLAS kernel family each side runs.

Exit status: 0 when every gbtd relative error is within 1% (relative) of TensorLy's, 1 otherwise or
when a run fails. The speed target (gbtd >= 5x faster) is reported, not enforced.

Usage: .venv/bin/python scripts/compare_tensorly.py [--mode process|in-process|both] [--threads N]
       [--repeat K] [--cases a,b] [--workdir DIR] [--gbtd PATH] [--no-build]
       [--unset-openblas-coretype] [--gbtd-env KEY=VALUE ...] [--verbose]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_NAMES = ["tucker2-kernel", "cp-kernel", "tucker-lowrank", "cp-lowrank"]
# Real-shaped kernels at high ranks (a half and an eighth of the dimensions): the common case of
# compressing a network's 1×1 and 3×3 convs. Not in the default list (--cases all includes them).
EXTRA_CASES = ["t2-1x1-half", "t2-1x1-eighth", "t2-3x3-half", "t2-3x3-eighth"]
SPEED_TARGET = 5.0
# Pause after each timed run. OpenBLAS's idle worker threads spin (sched_yield) for about 0.1 s after
# a threaded call before they sleep; numpy's, in this process, would otherwise still be spinning on
# the cores while the gbtd run that follows starts (on 2 cores that slowed gbtd's 100^3 Tucker by up to 2x).
SETTLE_S = 0.5
ERROR_SLACK = 0.01


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="BLAS threads for both sides")
    p.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest counts")
    p.add_argument("--cases", default=",".join(CASE_NAMES),
                   help="comma-separated subset of " + ",".join(CASE_NAMES + EXTRA_CASES) + ", or 'all'")
    p.add_argument("--workdir", default=None, help="where the .npy files go (default: a temporary directory)")
    p.add_argument("--gbtd", default=None, help="gbtd binary (default: target/release/gbtd, built if needed)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--verbose", action="store_true", help="also print every run's time, in run order")
    p.add_argument(
        "--mode",
        choices=["process", "in-process", "both"],
        default="both",
        help="gbtd as a whole `gbtd decompose` process, gbtd's Python package in this process, or both",
    )
    p.add_argument(
        "--gbtd-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a variable for the gbtd processes only (repeatable)",
    )
    p.add_argument(
        "--unset-openblas-coretype",
        action="store_true",
        help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for both sides",
    )
    args = p.parse_args()
    if args.cases == "all":
        args.cases = ",".join(CASE_NAMES + EXTRA_CASES)
    for c in args.cases.split(","):
        if c not in CASE_NAMES + EXTRA_CASES:
            p.error(f"unknown case '{c}'; choose from {', '.join(CASE_NAMES + EXTRA_CASES)} or all")
    if args.threads < 1 or args.repeat < 1:
        p.error("--threads and --repeat must be >= 1")
    for kv in args.gbtd_env:
        if "=" not in kv or not kv.split("=", 1)[0]:
            p.error(f"--gbtd-env wants KEY=VALUE, got '{kv}'")
    return args


ARGS = parse_args()

# The environment must be fixed before numpy (and its OpenBLAS) is loaded.
_want = {k: str(ARGS.threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
_drop = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if ARGS.unset_openblas_coretype else ()
if any(os.environ.get(k) != v for k, v in _want.items()) or any(k in os.environ for k in _drop):
    env = dict(os.environ)
    env.update(_want)
    for k in _drop:
        env.pop(k, None)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import tensorly as tl  # noqa: E402
from tensorly.decomposition import parafac, partial_tucker, tucker  # noqa: E402
from tensorly.tenalg import multi_mode_dot  # noqa: E402


# TensorLy's SVD init warns that a CP rank above a mode's dimension is truncated there (it then fills
# the remaining columns randomly, as gbtd does); expected for CP 64 of a kernel with 3x3 spatial modes.
warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")


def rel_error(x, y):
    return float(np.linalg.norm((x - y).ravel()) / np.linalg.norm(x.ravel()))


def orth(rng, n, r):
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def make_tensor(case, rng):
    if case.startswith("t2-1x1"):
        return rng.standard_normal((1280, 320, 1, 1)) * np.sqrt(2.0 / 320)
    if case.startswith("t2-3x3"):
        return rng.standard_normal((512, 512, 3, 3)) * np.sqrt(2.0 / (512 * 9))
    if case == "tucker2-kernel":
        return rng.standard_normal((512, 512, 3, 3)) * np.sqrt(2.0 / (512 * 9))
    if case == "cp-kernel":
        return rng.standard_normal((256, 256, 3, 3)) * np.sqrt(2.0 / (256 * 9))
    if case == "tucker-lowrank":
        core = rng.standard_normal((10, 10, 10))
        x = multi_mode_dot(core, [orth(rng, 100, 10) for _ in range(3)])
    else:
        x = tl.cp_to_tensor((np.ones(10), [rng.standard_normal((100, 10)) for _ in range(3)]))
    noise = rng.standard_normal(x.shape)
    return x + 0.1 * np.linalg.norm(x) / np.linalg.norm(noise) * noise


# (label, gbtd method, gbtd rank list, iterations)
CASES = {
    "tucker2-kernel": ("Tucker-2 (128,128) of (512,512,3,3)", "tucker2", "128,128", 10),
    "cp-kernel": ("CP 64 of (256,256,3,3)", "cp", "64", 25),
    "tucker-lowrank": ("Tucker (10,10,10) of 100^3", "tucker", "10,10,10", 20),
    "cp-lowrank": ("CP 10 of 100^3", "cp", "10", 100),
    "t2-1x1-half": ("Tucker-2 (640,160) of (1280,320,1,1)", "tucker2", "640,160", 10),
    "t2-1x1-eighth": ("Tucker-2 (160,40) of (1280,320,1,1)", "tucker2", "160,40", 10),
    "t2-3x3-half": ("Tucker-2 (256,256) of (512,512,3,3)", "tucker2", "256,256", 10),
    "t2-3x3-eighth": ("Tucker-2 (64,64) of (512,512,3,3)", "tucker2", "64,64", 10),
}


def run_tensorly(case, x):
    _, _, rank, n_iter = CASES[case]
    ranks = [int(r) for r in rank.split(",")]
    t0 = time.perf_counter()
    if CASES[case][1] == "tucker2":
        (core, factors), _ = partial_tucker(x, rank=ranks, modes=[0, 1], n_iter_max=n_iter, init="svd", tol=0)
        secs = time.perf_counter() - t0
        rec = multi_mode_dot(core, factors, modes=[0, 1])
    elif case == "tucker-lowrank":
        t = tucker(x, rank=ranks, n_iter_max=n_iter, init="svd", tol=0)
        secs = time.perf_counter() - t0
        rec = tl.tucker_to_tensor(t)
    else:
        cp = parafac(x, rank=ranks[0], n_iter_max=n_iter, init="svd", tol=0, random_state=0)
        secs = time.perf_counter() - t0
        rec = tl.cp_to_tensor(cp)
    return secs, rel_error(x, rec)


def run_gbtd_inprocess(case, x):
    """gbtd's Python function of TensorLy's name on the same array: (seconds of the call, error)."""
    import gbtd as g

    _, _, rank, n_iter = CASES[case]
    ranks = [int(r) for r in rank.split(",")]
    t0 = time.perf_counter()
    if CASES[case][1] == "tucker2":
        (core, factors), _ = g.partial_tucker(x, rank=ranks, modes=[0, 1], n_iter_max=n_iter, init="svd", tol=0)
        secs = time.perf_counter() - t0
        rec = multi_mode_dot(core, factors, modes=[0, 1])
    elif case == "tucker-lowrank":
        t = g.tucker(x, rank=ranks, n_iter_max=n_iter, init="svd", tol=0)
        secs = time.perf_counter() - t0
        rec = tl.tucker_to_tensor(t)
    else:
        cp = g.parafac(x, rank=ranks[0], n_iter_max=n_iter, init="svd", tol=0, random_state=0)
        secs = time.perf_counter() - t0
        rec = tl.cp_to_tensor(cp)
    return secs, rel_error(x, rec)


def cpu_description():
    """Vendor, model name and family/model from /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (p.strip() for p in line.split(":", 1))
                    fields.setdefault(k, v)
    except OSError:
        return "unknown CPU"
    return (f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')} "
            f"(family {fields.get('cpu family', '?')} model {fields.get('model', '?')})")


def in_process_table(cases):
    """The in-process comparison (see the module documentation); returns whether all errors pass."""
    import gbtd as g

    g.set_num_threads(ARGS.threads)
    print()
    print(f"in one process: gbtd {g.__version__} (OpenBLAS {g.blas_info()['core']}, {g.get_num_threads()} threads) "
          f"vs TensorLy {tl.__version__} (numpy's OpenBLAS {numpy_openblas_core()}); alternating, {ARGS.repeat} runs each")
    header = f"{'case':<38} {'iters':>5} {'TensorLy s':>11} {'gbtd s':>9} {'median':>8} {'best':>7} " \
             f"{'TensorLy err':>13} {'gbtd err':>13} {'err diff':>9}"
    print(header)
    print("-" * len(header))
    ok_all = True
    for case in cases:
        rng = np.random.default_rng(1000 + (CASE_NAMES + EXTRA_CASES).index(case))
        x = make_tensor(case, rng)
        label, _, _, n_iter = CASES[case]
        tl_runs, g_runs = [], []
        for _ in range(ARGS.repeat):
            tl_runs.append(run_tensorly(case, x))
            time.sleep(SETTLE_S)
            g_runs.append(run_gbtd_inprocess(case, x))
            time.sleep(SETTLE_S)
        if ARGS.verbose:
            print(f"  {case} TensorLy s: " + " ".join(f"{s:.3f}" for s, _ in tl_runs))
            print(f"  {case} gbtd s:     " + " ".join(f"{s:.3f}" for s, _ in g_runs))
        median = statistics.median(t / s for (t, _), (s, _) in zip(tl_runs, g_runs))
        best = min(t for t, _ in tl_runs) / min(s for s, _ in g_runs)
        tl_err, g_err = tl_runs[0][1], g_runs[0][1]
        diff = (g_err - tl_err) / tl_err
        ok = g_err <= tl_err * (1 + ERROR_SLACK)
        ok_all &= ok
        tl_med = statistics.median(t for t, _ in tl_runs)
        g_med = statistics.median(s for s, _ in g_runs)
        flag = "" if ok else "  <-- error more than 1% worse"
        print(f"{label:<38} {n_iter:>5} {tl_med:>11.3f} {g_med:>9.3f} {median:>7.1f}x {best:>6.1f}x "
              f"{tl_err:>13.6e} {g_err:>13.6e} {diff:>+9.2%}{flag}")
    print("-" * len(header))
    print(f"TensorLy s / gbtd s = medians of the calls; median = median over the alternating pairs of "
          f"TensorLy s / gbtd s (target >= {SPEED_TARGET:g}x); best = fastest TensorLy / fastest gbtd")
    return ok_all


def gbtd_env():
    """The environment of the gbtd processes: this one plus --gbtd-env."""
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in ARGS.gbtd_env)
    return env


def numpy_openblas_core():
    """The kernel family of numpy's bundled OpenBLAS, asked through its exported get_corename."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            fn = getattr(handle, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode().strip()
    return "unknown"


def gbtd_blas_info(gbtd):
    res = subprocess.run([gbtd, "blas-info", "--json"], capture_output=True, text=True, env=gbtd_env())
    if res.returncode != 0:
        return {"openblas_core": "unknown", "decision": res.stderr.strip()}
    return json.loads(res.stdout)


def run_gbtd(gbtd, case, path, workdir):
    """One `gbtd decompose` process: (wall seconds of the whole process, its JSON report, X_hat)."""
    _, method, rank, n_iter = CASES[case]
    factors = os.path.join(workdir, case + ".factors.safetensors")
    cmd = [gbtd, "decompose", path, "--method", method, "--rank", rank, "--max-iter", str(n_iter),
           "--tol", "0", "--init", "svd", "--seed", "0", "--json", "--quiet", "--out", factors]
    env = gbtd_env()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    report = json.loads(res.stdout)
    report["wall"] = wall
    rec_path = os.path.join(workdir, case + ".rec.npy")
    res = subprocess.run([gbtd, "reconstruct", factors, "--out", rec_path, "--quiet"], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        raise RuntimeError(f"gbtd reconstruct failed: {res.stderr.strip()}")
    return report, np.load(rec_path)


def find_gbtd():
    if ARGS.gbtd:
        return ARGS.gbtd
    target = os.path.join(ROOT, "target")
    gbtd = os.path.join(target, "release", "gbtd")
    if not ARGS.no_build:
        env = dict(os.environ, CARGO_TARGET_DIR=target)
        print("building: cargo build --release -p gbtd", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-p", "gbtd"], cwd=ROOT, env=env, check=True)
    if not os.path.exists(gbtd):
        sys.exit(f"error: {gbtd} not found; build it with `cargo build --release -p gbtd` or pass --gbtd")
    return gbtd


def main():
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured, also in a log file
    print(f"CPU: {cpu_description()}")
    if ARGS.mode == "in-process":
        sys.exit(0 if in_process_table(ARGS.cases.split(",")) else 1)
    gbtd = find_gbtd()
    workdir = ARGS.workdir or tempfile.mkdtemp(prefix="gbtd-vs-tensorly-")
    os.makedirs(workdir, exist_ok=True)
    env_desc = ", ".join(
        f"{k}={os.environ.get(k, '(unset)')}"
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    )
    print(f"TensorLy {tl.__version__}, numpy {np.__version__}; gbtd {gbtd}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"environment (both sides): {env_desc}; float64; best of {ARGS.repeat}")
    if ARGS.gbtd_env:
        print(f"gbtd processes only: {' '.join(ARGS.gbtd_env)}")
    info = gbtd_blas_info(gbtd)
    print(f"OpenBLAS kernels: numpy {numpy_openblas_core()}; gbtd {info.get('openblas_core')} "
          f"({info.get('decision')})")
    print(f"{os.cpu_count()} CPUs, load average {load} (timings are only comparable on an otherwise idle machine)")
    header = f"{'case':<38} {'iters':>5} {'TensorLy s':>11} {'gbtd s':>9} {'gbtd dec s':>10} {'speedup':>8} " \
             f"{'median':>8} {'TensorLy err':>13} {'gbtd err':>13} {'err diff':>9}"
    print(header)
    print("-" * len(header))
    failed = False
    for i, case in enumerate(ARGS.cases.split(",")):
        rng = np.random.default_rng(1000 + (CASE_NAMES + EXTRA_CASES).index(case))
        x = make_tensor(case, rng)
        path = os.path.join(workdir, case + ".npy")
        np.save(path, x)
        label, _, _, n_iter = CASES[case]
        try:
            # Interleaved, so that both sides see the same machine load.
            tl_runs, g_runs = [], []
            for _ in range(ARGS.repeat):
                tl_runs.append(run_tensorly(case, x))
                time.sleep(SETTLE_S)
                g_runs.append(run_gbtd(gbtd, case, path, workdir))
                time.sleep(SETTLE_S)
        except Exception as e:  # report and go on with the other cases
            print(f"{label:<38} FAILED: {e}")
            failed = True
            continue
        if ARGS.verbose:
            print(f"  {case} TensorLy s: " + " ".join(f"{s:.3f}" for s, _ in tl_runs))
            print(f"  {case} gbtd s:     " + " ".join(f"{r['wall']:.3f}" for r, _ in g_runs))
            print(f"  {case} gbtd dec s: " + " ".join(f"{r['seconds']:.3f}" for r, _ in g_runs))
        tl_secs = min(s for s, _ in tl_runs)
        tl_err = tl_runs[0][1]
        g_secs = min(r["wall"] for r, _ in g_runs)
        g_dec = min(r["seconds"] for r, _ in g_runs)
        report, rec = g_runs[0]
        g_err = rel_error(x, rec)
        if abs(g_err - report["rel_error"]) > 1e-6 * max(g_err, 1e-12) + 1e-12:
            print(f"warning: {case}: gbtd's JSON rel_error {report['rel_error']:.9g} differs from the recomputed {g_err:.9g}")
        diff = (g_err - tl_err) / tl_err
        ok = g_err <= tl_err * (1 + ERROR_SLACK)
        failed |= not ok
        speed = tl_secs / g_secs if g_secs > 0 else float("inf")
        pair_ratios = sorted(t / r["wall"] for (t, _), (r, _) in zip(tl_runs, g_runs) if r["wall"] > 0)
        median_ratio = pair_ratios[len(pair_ratios) // 2] if pair_ratios else float("inf")
        flag = "" if ok else "  <-- error more than 1% worse"
        print(f"{label:<38} {n_iter:>5} {tl_secs:>11.3f} {g_secs:>9.3f} {g_dec:>10.3f} {speed:>7.1f}x {median_ratio:>7.1f}x "
              f"{tl_err:>13.6e} {g_err:>13.6e} {diff:>+9.2%}{flag}")
    print("-" * len(header))
    print(f"gbtd s = whole `gbtd decompose` process (start-up, file reading, decomposition, writing the "
          f"factors); gbtd dec s = its decomposition alone (JSON `seconds`)")
    print(f"speedup = TensorLy s / gbtd s, fastest runs (target >= {SPEED_TARGET:g}x); median = median over the "
          f"interleaved pairs of runs of TensorLy s / gbtd s; err diff = (gbtd - TensorLy) / TensorLy "
          f"(fails above +{ERROR_SLACK:.0%})")
    if not ARGS.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if ARGS.mode == "both":
        failed |= not in_process_table(ARGS.cases.split(","))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

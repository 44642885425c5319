#!/usr/bin/env python3
"""Compressing a whole torchvision ResNet-50 with gbtd against the same job done with TensorLy.

gbtd: `gbtd.torch.compress_model(model, method="tucker2", rank_rule="energy:0.9", n_iter_max=N)`,
one call (it reads every conv's weight, computes the unfolding spectra, chooses the ranks, runs
Tucker-2 per layer and builds the three-conv chains).

TensorLy, as a TensorLy user writes it: a loop over the model's `nn.Conv2d` layers that
  1. chooses the ranks of the energy rule from NumPy's SVD of the mode-0 and mode-1 unfoldings
     (`np.linalg.svd(..., compute_uv=False)`; the smallest rank keeping 90% of the squared singular
     values, as gbtd's rule),
  2. runs `tensorly.decomposition.partial_tucker(w, rank, modes=[0, 1], n_iter_max=N, init="svd")`,
  3. builds the same `nn.Sequential` of three convs and puts it in place.
Layers whose chain would not be smaller are left alone on both sides (same test as gbtd's). Both
sides use the default tolerance of their own `partial_tucker` (TensorLy's 1e-4; gbtd.torch's 1e-8,
so gbtd runs at least as many sweeps) and the same `n_iter_max`.

The two runs alternate (--repeat K pairs, TensorLy first); the report gives each run's seconds, the
median ratio, the number of compressed layers, the total weights after compression and the mean
relative kernel error of each side. Threads: --threads for torch, numpy's OpenBLAS (set before
numpy loads) and gbtd. Weights are torchvision's random initialisation (seed 0): their flat spectra
give large ranks (the slow case); a trained network's ranks are smaller.

Usage: .venv/bin/python scripts/compress_vs_tensorly.py [--repeat K] [--n-iter-max N] [--threads T]
"""
import argparse
import os
import statistics
import sys
import time

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--repeat", type=int, default=1)
p.add_argument("--n-iter-max", type=int, default=10)
p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
p.add_argument("--energy", type=float, default=0.9)
ARGS = p.parse_args()

_want = {k: str(ARGS.threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
if any(os.environ.get(k) != v for k, v in _want.items()):
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **_want))

import copy  # noqa: E402

import numpy as np  # noqa: E402
import tensorly as tl  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from tensorly.decomposition import partial_tucker  # noqa: E402
from torch import nn  # noqa: E402

import gbtd  # noqa: E402
import gbtd.torch as gt  # noqa: E402

torch.set_num_threads(ARGS.threads)
gbtd.set_num_threads(ARGS.threads)


def energy_rank(m, f):
    s2 = np.linalg.svd(m, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s2), f * s2.sum() * (1 - 1e-12)) + 1)


def tensorly_compress(model):
    """The TensorLy user's loop (see the module documentation): (layers, weights after, mean error)."""
    errors, after = [], 0
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels == 1:
            continue
        w = conv.weight.detach().double().numpy()
        o, i, kh, kw = w.shape
        r0 = energy_rank(tl.unfold(w, 0), ARGS.energy)
        r1 = energy_rank(tl.unfold(w, 1), ARGS.energy)
        params = o * r0 + i * r1 + r0 * r1 * kh * kw
        if (r0 >= o and r1 >= i) or params >= w.size:
            continue
        (core, (a0, a1)), _ = partial_tucker(w, rank=[r0, r1], modes=[0, 1], n_iter_max=ARGS.n_iter_max, init="svd")
        errors.append(np.linalg.norm(w - tl.tenalg.multi_mode_dot(core, [a0, a1], modes=[0, 1])) / np.linalg.norm(w))
        seq = nn.Sequential(
            nn.Conv2d(i, r1, 1, bias=False),
            nn.Conv2d(r1, r0, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False),
            nn.Conv2d(r0, o, 1, bias=conv.bias is not None),
        )
        with torch.no_grad():
            seq[0].weight.copy_(torch.from_numpy(a1.T.copy()).view(r1, i, 1, 1))
            seq[1].weight.copy_(torch.from_numpy(core.copy()))
            seq[2].weight.copy_(torch.from_numpy(a0.copy()).view(o, r0, 1, 1))
            if conv.bias is not None:
                seq[2].bias.copy_(conv.bias)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, seq)
        after += params
    return len(errors), after, float(np.mean(errors))


def gbtd_compress(model):
    small, report = gt.compress_model(
        model, method="tucker2", rank_rule=f"energy:{ARGS.energy}", n_iter_max=ARGS.n_iter_max, linear=False, inplace=True
    )
    return len(report.layers), sum(l["params_after"] for l in report.layers), float(
        np.mean([l["relative_error"] for l in report.layers])
    )


def main():
    torch.manual_seed(0)
    base = torchvision.models.resnet50().eval()
    print(f"ResNet-50 (torchvision, random init seed 0), Tucker-2, energy:{ARGS.energy}, n_iter_max {ARGS.n_iter_max}, "
          f"{ARGS.threads} threads, {ARGS.repeat} alternating pairs; gbtd OpenBLAS {gbtd.blas_info()['core']}")
    times = {"TensorLy": [], "gbtd": []}
    outcome = {}
    for _ in range(ARGS.repeat):
        for side, fn in (("TensorLy", tensorly_compress), ("gbtd", gbtd_compress)):
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            outcome[side] = fn(m)
            times[side].append(time.perf_counter() - t0)
            print(f"  {side:<8} {times[side][-1]:8.1f} s  ({outcome[side][0]} layers, {outcome[side][1]:,} weights, "
                  f"mean kernel error {outcome[side][2]:.4f})", flush=True)
            time.sleep(0.5)
    ratio = statistics.median(t / g for t, g in zip(times["TensorLy"], times["gbtd"]))
    print(f"median TensorLy / gbtd: {ratio:.1f}x  (TensorLy {statistics.median(times['TensorLy']):.1f} s, "
          f"gbtd {statistics.median(times['gbtd']):.1f} s)")


if __name__ == "__main__":
    main()

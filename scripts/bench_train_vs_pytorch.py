#!/usr/bin/env python3
"""Training throughput of `netgen train` vs an equivalent PyTorch eager training script, on CPU.

Both sides train the same network on Fashion-MNIST (28x28, read from the Debian package's IDX .gz
files), data loading included, at the same batch size and intra-op thread count:

* the network is any small-image post-activation aggregated preset of netgen (default
  `resnext29_small`: 3x3 stem, 3 stages of 3 ResNeXt bottlenecks, groups 8), rebuilt here in
  PyTorch with torchvision's module names; the script checks that both sides have the same number
  of parameters (netgen's `emit --json`) before timing;
* one step = the next batch (a seeded permutation, no augmentation; images normalised with the
  training set's mean/std), zero the gradients, forward in training mode, cross-entropy, backward,
  Nesterov SGD (momentum 0.9, weight decay 5e-4 on conv/fc weights only, warm-up + cosine
  learning rate), and reading the loss (netgen checks it for NaN every step);
* netgen's figure is the `img_per_s` of `netgen train --json` (training steps only, data loading
  included, evaluation excluded; run with `--eval-samples 256` to keep the final evaluation
  short); PyTorch's is images / seconds over the same number of steps, timed the same way (from
  the first batch to the last update, evaluation excluded).

Rounds alternate netgen and PyTorch (each side runs alone) so that both see the same machine
load; the script prints each round and the ratio of the medians (netgen / PyTorch).

Run from the repository root:  .venv/bin/python scripts/bench_train_vs_pytorch.py [--steps 60]
"""
import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Block(nn.Module):
    """torchvision's Bottleneck with explicit widths: 1x1 -> 3x3 grouped (stride) -> 1x1, BN after
    each, ReLU, projection shortcut (1x1 stride + BN) when the shape changes."""

    def __init__(self, cin, mid, width, groups, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class SmallNet(nn.Module):
    """A netgen small-image post-activation aggregated spec in PyTorch."""

    def __init__(self, spec):
        super().__init__()
        assert spec["stem"]["kind"] == "small" and not spec["preact"], "only small post-activation specs"
        w = spec["stem"]["width"]
        self.conv1 = nn.Conv2d(spec["in_channels"], w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        cin = w
        for s, st in enumerate(spec["stages"]):
            u = st["unit"]
            assert u["kind"] == "aggregated"
            blocks = []
            for i in range(st["depth"]):
                blocks.append(Block(cin, u["mid"], st["width"], u["groups"], st["stride"] if i == 0 else 1))
                cin = st["width"]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.nstages = len(spec["stages"])
        self.fc = nn.Linear(cin, spec["classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(self.nstages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def pytorch_round(spec, images, labels, steps, batch, seed):
    torch.manual_seed(seed)
    model = SmallNet(spec).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1 * batch / 128, momentum=0.9, nesterov=True)
    warm = math.ceil(0.03 * steps)
    base = 0.1 * batch / 128

    def lr_at(t):
        if t < warm:
            return base * (t + 1) / warm
        return base * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))

    mean, std = images.float().mean().item() / 255, images.float().std().item() / 255
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    t0 = time.perf_counter()
    for t in range(steps):
        idx = perm[t * batch:(t + 1) * batch]
        x = (images[idx].unsqueeze(1).float() / 255 - mean) / std
        y = labels[idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(t)
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError("PyTorch loss is not finite")
    return batch * steps / (time.perf_counter() - t0)


def netgen_round(exe, preset, steps, batch, threads, workers, seed):
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(exe), "train", "--preset", preset, "--max-steps", str(steps), "--batch-size", str(batch),
               "--threads", str(threads), "--device", "cpu", "--no-augment", "--eval-samples", "256",
               "--seed", str(seed), "--json", "--quiet", "--out", os.path.join(d, "run")]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out)["img_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="resnext29_small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=None, help="netgen data-loader threads (default: netgen's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--exe", default=str(ROOT / "target" / "release" / "netgen"), help="netgen binary")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "netgen", "--quiet"], cwd=ROOT, check=True)
    exe = Path(a.exe)
    doc = json.loads(subprocess.run([str(exe), "emit", "--preset", a.preset, "--input", "28", "--in-channels", "1",
                                     "--json", "--dry-run"], check=True, capture_output=True, text=True).stdout)
    spec = doc["spec"]
    pt_params = sum(p.numel() for p in SmallNet(spec).parameters())
    if pt_params != doc["params"]:
        sys.exit(f"the PyTorch twin has {pt_params} parameters, netgen {doc['params']}: not the same network")
    images = torch.from_numpy(read_idx(FMNIST / "train-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64))
    print(f"{a.preset}: {pt_params} parameters on both sides; Fashion-MNIST 28x28, batch {a.batch}, "
          f"{a.steps} steps per round, {a.threads} thread(s)")
    ng, pt = [], []
    for r in range(a.rounds):
        order = ["netgen", "pytorch"] if r % 2 == 0 else ["pytorch", "netgen"]
        for side in order:
            if side == "netgen":
                ng.append(netgen_round(exe, a.preset, a.steps, a.batch, a.threads, a.workers, r))
            else:
                pt.append(pytorch_round(spec, images, labels, a.steps, a.batch, r))
        print(f"round {r + 1}: netgen {ng[-1]:.1f} img/s, PyTorch {pt[-1]:.1f} img/s")
    print(f"median: netgen {statistics.median(ng):.1f} img/s, PyTorch {statistics.median(pt):.1f} img/s, "
          f"netgen / PyTorch = {statistics.median(ng) / statistics.median(pt):.3f}")


if __name__ == "__main__":
    main()

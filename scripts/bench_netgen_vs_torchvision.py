#!/usr/bin/env python3
"""Forward+backward throughput of netgen's tch networks vs torchvision in PyTorch eager, on CPU.

For each model (resnet50, resnext50_32x4d) both sides run the same training step on a batch of
8 random 224x224 images with fixed random labels: zero the gradients in place, logits = model(x)
in training mode (BN batch statistics), cross-entropy, backward. Both use the same intra-op
thread count (torch.set_num_threads here, tch::set_num_threads in netgen's process).

netgen's side is the Rust example netgen/examples/fwdbwd.rs (built with --release by this
script), kept running in `--serve` mode: after both sides' warm-up steps, the script times
--steps PAIRS of steps, one torchvision step and one netgen step per pair, alternating which goes
first, so that both sides see the same machine load (the two never run at the same time).
Printed per model: images/s (batch / step seconds) of the median and of the fastest step of each
side, and netgen/torchvision as the ratio of the medians, the ratio of the fastest steps, and the
median of the per-pair ratios.

Run from the repository root:  .venv/bin/python scripts/bench_netgen_vs_torchvision.py
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parent.parent


class Torchvision:
    def __init__(self, name, batch, size):
        torch.manual_seed(0)
        self.model = getattr(torchvision.models, name)(weights=None).train()
        self.x = torch.randn(batch, 3, size, size)
        self.labels = torch.randint(1000, (batch,))

    def step(self):
        t0 = time.perf_counter()
        self.model.zero_grad(set_to_none=False)
        loss = F.cross_entropy(self.model(self.x), self.labels)
        loss.backward()
        return time.perf_counter() - t0


class Netgen:
    def __init__(self, exe, name, batch, size, threads, warmup):
        cmd = [str(exe), "--preset", name, "--batch", str(batch), "--size", str(size), "--threads",
               str(threads), "--warmup", str(warmup), "--device", "cpu", "--serve"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"netgen fwdbwd did not start: {line!r}")

    def step(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnext50_32x4d"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="intra-op threads for both sides (default: torch's default)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    ap.add_argument("--steps", type=int, default=8, help="timed step pairs per model")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    env = dict(os.environ, CARGO_TERM_QUIET="true")
    subprocess.run(["cargo", "build", "--release", "-p", "netgen", "--example", "fwdbwd"],
                   cwd=ROOT, check=True, env=env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    exe = target / "release" / "examples" / "fwdbwd"

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU, "
          f"threads {args.threads}, batch {args.batch} at {args.size}x{args.size}, "
          f"warm-up {args.warmup} steps per side, {args.steps} interleaved step pairs per model")
    print(f"{'model':<17}{'torchvision img/s':>26}{'netgen img/s':>22}{'netgen/torchvision':>34}")
    print(f"{'':<17}{'median':>13}{'best':>13}{'median':>11}{'best':>11}"
          f"{'medians':>11}{'best':>11}{'pairs':>12}")
    for name in args.models:
        tv = Torchvision(name, args.batch, args.size)
        for _ in range(args.warmup):
            tv.step()
        ng = Netgen(exe, name, args.batch, args.size, args.threads, args.warmup)
        tv_t, ng_t = [], []
        for i in range(args.steps):
            if i % 2 == 0:
                tv_t.append(tv.step())
                ng_t.append(ng.step())
            else:
                ng_t.append(ng.step())
                tv_t.append(tv.step())
        ng.close()
        del tv
        b = args.batch
        tv_med, ng_med = b / statistics.median(tv_t), b / statistics.median(ng_t)
        tv_best, ng_best = b / min(tv_t), b / min(ng_t)
        pairs = statistics.median(t / n for t, n in zip(tv_t, ng_t))
        print(f"{name:<17}{tv_med:>13.3f}{tv_best:>13.3f}{ng_med:>11.3f}{ng_best:>11.3f}"
              f"{ng_med / tv_med:>11.3f}{ng_best / tv_best:>11.3f}{pairs:>12.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

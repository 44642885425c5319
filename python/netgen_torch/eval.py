"""``python -m netgen_torch.eval --run DIR``: test accuracy of a run directory's checkpoint (one
written by ``netgen train`` or by ``netgen_torch.train``), like ``netgen eval``.

Evaluation (also used by the trainer): BN in evaluation mode, no gradients; over the first
``limit`` test images (all when ``None``) in order: mean cross-entropy without label smoothing,
top-1 and top-5 (top-k with k = classes below 5 classes) in percent. Under ``torchrun`` each rank
takes a contiguous slice and the sums are all-reduced, so every rank gets the same result.

Examples::

    python -m netgen_torch.eval --run runs/cru
    python -m netgen_torch.eval --run runs/cru --last --json
    python -m netgen_torch.eval --weights w.safetensors --spec spec.json --data cifar10:/data/cifar
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import Data, DataError, open_data
from .rundir import RunError, check_run_dir, load_tensors, read_json, read_metadata, read_spec


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    samples: int


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, batch: int, limit: int | None, device: torch.device,
             rank: int = 0, world: int = 1, amp: bool = False,
             channels_last: bool = False) -> EvalResult:
    """Evaluates ``model`` (switched to eval mode and back) on the test split of ``data``."""
    was_training = model.training
    model.eval()
    n = min(data.info.test_len, limit if limit is not None else data.info.test_len)
    if n == 0:
        raise DataError("the test split is empty")
    lo, hi = n * rank // world, n * (rank + 1) // world
    sums = torch.zeros(3, dtype=torch.float64)
    k = min(5, data.info.classes)
    for b in range(lo, hi, batch):
        x, y = data.test_batch(list(range(b, min(b + batch, hi))))
        x, y = x.to(device, non_blocking=True), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(k, 1).indices.eq(y.unsqueeze(1))
        sums += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(),
                              top[:, 0].sum().item(), top.sum().item()], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train(was_training)
    return EvalResult(float(sums[0]) / n, 100.0 * float(sums[1]) / n, 100.0 * float(sums[2]) / n, n)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Strict load of a ``.safetensors`` state dict (names and shapes must all match)."""
    sd = load_tensors(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise RunError(f"{path} does not fit the network: {' '.join(x.strip() for x in first[:3])}") from None


def build_model(spec: dict) -> torch.nn.Module:
    from . import from_spec

    try:
        return from_spec(spec)
    except Exception as e:  # noqa: BLE001 — SpecError and friends: one line for the user
        raise RunError(f"the spec cannot be built: {e}") from None


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m netgen_torch.eval",
        description="Test accuracy of a run directory's checkpoint (netgen train or netgen_torch.train), or of "
                    "--weights with --spec.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, metavar="DIR", help="run directory: spec.json, config.json, best.safetensors")
    p.add_argument("--weights", type=Path, metavar="FILE", help="weights (default with --run: DIR/best.safetensors)")
    p.add_argument("--last", action="store_true", help="with --run: DIR/last.safetensors instead of best")
    p.add_argument("--spec", type=Path, metavar="FILE", help="the network's spec (JSON or TOML), with --weights")
    p.add_argument("--data", metavar="SOURCE", help="data source (default: the run's, or fashion-mnist)")
    p.add_argument("--batch-size", type=int, metavar="N", help="evaluation batch size (default: the run's, or 256)")
    p.add_argument("--samples", type=int, metavar="N", help="first N test images (default: the run's setting, else all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads")
    p.add_argument("--json", action="store_true", help="print {top1, top5, loss, samples, weights, data, step}")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def resolve_device(s: str) -> torch.device:
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RunError(f"--device {s}: CUDA is not available (no GPU visible or a CPU-only torch); use "
                           "--device cpu or auto")
        i = 0 if s == "cuda" else s[5:]
        if not str(i).isdigit() or int(i) >= torch.cuda.device_count():
            raise RunError(f"--device {s}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0..)")
        return torch.device(f"cuda:{int(i)}")
    raise RunError(f"--device: unknown device '{s}'; use auto, cpu, cuda or cuda:N")


def run(a) -> int:
    if a.run is not None:
        if a.spec is not None:
            raise RunError("--run and --spec exclude each other (a run directory has its spec.json)")
        check_run_dir(a.run)
        spec = read_spec(a.run / "spec.json")
        cfg = read_json(a.run / "config.json")
        weights = a.weights or a.run / ("last.safetensors" if a.last else "best.safetensors")
        data_s = a.data or cfg["data"]
        batch = a.batch_size or cfg["eval_batch_size"]
        samples = a.samples if a.samples is not None else cfg.get("eval_samples")
    elif a.spec is not None and a.weights is not None:
        spec, weights = read_spec(a.spec), a.weights
        data_s, batch, samples = a.data or "fashion-mnist", a.batch_size or 256, a.samples
    else:
        raise RunError("nothing to evaluate: give --run DIR, or --weights FILE --spec FILE")
    if samples is not None and samples < 1:
        raise RunError("--samples must be at least 1")
    if batch < 1:
        raise RunError("--batch-size must be at least 1")
    if not Path(weights).is_file():
        raise RunError(f"{weights} does not exist; a run writes best.safetensors at its first evaluation "
                       "(--last reads last.safetensors)")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    data = open_data(data_s, input_size=spec["input_size"], augment=False)
    info = data.info
    if (info.channels, info.classes) != (spec["in_channels"], spec["classes"]):
        raise RunError(f"the network takes {spec['in_channels']} channel(s) and {spec['classes']} classes, but "
                       f"{info.name} has {info.channels} and {info.classes}; pass the --data the network was "
                       "trained on")
    model = build_model(spec)
    load_weights(model, Path(weights))
    model.to(device)
    step = read_metadata(Path(weights)).get("step")
    if not a.quiet and not a.json:
        n = info.test_len if samples is None else min(samples, info.test_len)
        print(f"netgen_torch: evaluating {weights} on {n} test images of {info.name} ({device})", file=sys.stderr)
    r = evaluate(model, data, batch, samples, device)
    if a.json:
        print(json.dumps({"top1": r.top1, "top5": r.top5, "loss": r.loss, "samples": r.samples,
                          "weights": str(weights), "step": int(step) if step and step.isdigit() else None,
                          "data": data_s, "device": str(device)}, indent=2))
    else:
        print(f"top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  loss {r.loss:.4f}  ({r.samples} test images, {weights})")
    return 0


def main(argv=None) -> int:
    a = parse(argv)
    try:
        return run(a)
    except (RunError, DataError) as e:
        print(f"netgen_torch: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"netgen_torch: error: {e} missing from the run's config.json or spec.json; is it a netgen run "
              "directory?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The run directory of ``netgen train``, read and written from Python (netgen/src/train/checkpoint.rs,
metrics.rs, config.rs, trainer.rs).

| file | contents |
|---|---|
| ``spec.json`` | the network (``netgen emit --json``'s ``spec`` object) |
| ``config.json`` | netgen's ``TrainConfig`` (extra keys written here are ignored by netgen) |
| ``metrics.csv`` | ``step,epoch,lr,train_loss,train_acc,test_loss,test_top1,test_top5,img_per_s,seconds`` |
| ``curves.png`` | loss and accuracy against epochs (matplotlib, when installed) |
| ``last.safetensors``, ``best.safetensors`` | the state dict; metadata ``step`` (and ``top1``), ``format`` |
| ``state.safetensors`` | ``momentum.<parameter>`` buffers and the ``meta.*`` loop scalars |

Every file is written to ``.tmp.NAME`` in the same directory, fsynced, renamed over ``NAME`` and
the directory fsynced: a process killed at any moment leaves the previous file or the new one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

HEADER = "step,epoch,lr,train_loss,train_acc,test_loss,test_top1,test_top5,img_per_s,seconds"


class RunError(Exception):
    """A run directory problem; the message says what to do."""


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a synced temporary file and a rename."""
    path = Path(path)
    tmp = path.parent / f".tmp.{path.name}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write ({e})") from None
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Writes named tensors (CPU, contiguous copies) with string metadata, atomically."""
    t = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, save(t, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise RunError(f"{path}: cannot read checkpoint ({e})") from None


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise RunError(f"{path}: not a safetensors file ({e})") from None


# ---------------------------------------------------------------------------------------------
# metrics.csv

def _rust_float(v: float, prec: int) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{prec}f}"


def _rust_exp(v: float, prec: int) -> str:
    """Rust's ``{:.6e}``: ``5.000000e-2`` (no padding or sign on a positive exponent)."""
    if not math.isfinite(v):
        return _rust_float(v, prec)
    m, e = f"{v:.{prec}e}".split("e")
    return f"{m}e{int(e)}"


@dataclass
class Row:
    step: int
    epoch: float
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_top1: float
    test_top5: float
    img_per_s: float
    seconds: float

    def line(self) -> str:
        f = _rust_float
        return ",".join([str(self.step), f(self.epoch, 4), _rust_exp(self.lr, 6), f(self.train_loss, 5),
                         f(self.train_acc, 3), f(self.test_loss, 5), f(self.test_top1, 3), f(self.test_top5, 3),
                         f(self.img_per_s, 1), f(self.seconds, 1)])


def read_metrics(path: Path) -> list[Row]:
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines()[1:]:
        if not ln.strip():
            continue
        v = ln.split(",")
        try:
            if len(v) != 10:
                raise ValueError
            rows.append(Row(int(v[0]), *(float(x) for x in v[1:])))
        except ValueError:
            raise RunError(f"{path}: unreadable row '{ln}'") from None
    return rows


def write_metrics(path: Path, rows: list[Row]) -> None:
    write_text(path, HEADER + "\n" + "".join(r.line() + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# state.safetensors

@dataclass
class LoopState:
    """netgen's ``LoopState``: stored as ``meta.*`` one-element tensors (int64 / float64)."""

    step: int = 0
    total_steps: int = 0
    best_acc: float = float("-inf")
    best_step: int = 0
    plateau_factor: float = 1.0
    plateau_best: float = float("-inf")
    plateau_bad: int = 0
    seconds: float = 0.0
    seed: int = 0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            dt = torch.int64 if f.type in ("int", int) else torch.float64
            out[f"meta.{f.name}"] = torch.tensor([v], dtype=dt)
        return out

    @staticmethod
    def from_tensors(named: dict[str, torch.Tensor], path: Path) -> "LoopState":
        vals = {}
        for f in fields(LoopState):
            k = f"meta.{f.name}"
            if k not in named:
                raise RunError(f"{path}: missing {k}; the file is not a netgen training state")
            t = named[k].reshape(-1)[0]
            vals[f.name] = int(t) if f.type in ("int", int) else float(t)
        return LoopState(**vals)


# ---------------------------------------------------------------------------------------------
# spec.json / config.json

def read_spec(path: Path) -> dict:
    """A spec file: JSON (``netgen emit --json`` output or a bare spec, e.g. a run's spec.json) or TOML."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RunError(f"cannot read {path}: {e}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = json.loads(text)
    except ValueError as e:
        raise RunError(f"{path}: not a netgen spec ({e}); write one with netgen emit --json") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d = d["spec"]
    if not isinstance(d, dict) or "stages" not in d:
        raise RunError(f"{path}: not a netgen spec (no 'stages'); write one with netgen emit --json")
    return d


def check_run_dir(d: Path) -> None:
    """``d`` holds a run's ``spec.json`` and ``config.json``."""
    for f in ("spec.json", "config.json"):
        if not (Path(d) / f).is_file():
            raise RunError(f"{d} is not a netgen run directory (no {f}); give the --out of a netgen train or "
                           "netgen_torch.train run")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise RunError(f"cannot read {path}: {e}; is it a netgen run directory?") from None
    except ValueError as e:
        raise RunError(f"{path}: {e}") from None


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_fresh(out: Path) -> None:
    for f in ("config.json", "state.safetensors", "last.safetensors"):
        if (out / f).exists():
            raise RunError(f"{out} already holds a run ({f}); continue it with --resume {out} or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {out}: {e}") from None


# ---------------------------------------------------------------------------------------------
# curves.png

def draw_curves(path: Path, rows: list[Row], title: str) -> str | None:
    """Loss and accuracy against epochs; returns a note when it cannot draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: curves.png not drawn (metrics.csv has the figures)"
    ep = [r.epoch for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r.train_loss for r in rows], label="train")
    a.plot(ep, [r.test_loss for r in rows], label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [r.train_acc for r in rows], label="train top-1")
    b.plot(ep, [r.test_top1 for r in rows], label="test top-1")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return None

"""The optimisation recipe of ``netgen train`` (netgen/src/train/recipe.rs, sgd.rs), in PyTorch.

Learning rate of the step with 0-based index ``t`` of ``T`` steps (``W`` warm-up, ``E`` per epoch,
base rate ``η``): warm-up ``η·(t+1)/W`` for ``t < W``; then ``cosine``
``η·½(1 + cos(π·(t−W)/(T−W)))``, ``step:E1,E2,…`` ``η·0.1^k`` (``k`` milestones with ``t ≥ Ei·E``),
``constant`` ``η``, or ``plateau`` ``η·f`` (``f`` × 0.1 after ``patience`` evaluations without a
``min_delta``-point gain of the test top-1).

Optimiser: ``torch.optim.SGD`` (dampening 0) with two parameter groups, weight decay on tensors of
≥ 2 dimensions (conv and fc weights) and none on BN parameters and biases — netgen's own SGD
implements exactly this update, so the momentum buffers of one are the buffers of the other.

The dict forms (``to_dict`` / ``from_dict``) are the serde forms of netgen's ``Recipe`` in
``config.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class RecipeError(ValueError):
    """A recipe value the user must change; the message names the flag."""


def parse_schedule(s: str) -> dict:
    """``cosine``, ``constant``, ``plateau`` or ``step:E1,E2,…`` as netgen's serde dict."""
    s = s.strip()
    if s in ("cosine", "constant"):
        return {"kind": s}
    if s == "plateau":
        return paper_plateau()
    if not s.startswith("step:"):
        raise RecipeError(f"--schedule: unknown schedule '{s}'; use cosine, constant, plateau or step:E1,E2,… "
                          "(epochs)")
    ms = []
    for t in s[5:].split(","):
        try:
            e = float(t.strip())
        except ValueError:
            e = float("nan")
        if not (math.isfinite(e) and e > 0):
            raise RecipeError(f"--schedule: '{t}' is not a positive epoch number (e.g. step:30,60)")
        ms.append(e)
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise RecipeError(f"--schedule: milestones must increase, got {s[5:]}")
    return {"kind": "step", "milestones": ms, "gamma": 0.1}


def paper_plateau() -> dict:
    """The paper's plateau rule: × 0.1 after 2 evaluations without a 0.05-point gain."""
    return {"kind": "plateau", "factor": 0.1, "patience": 2, "min_delta": 0.05}


@dataclass
class Recipe:
    kind: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: dict
    warmup_epochs: float | None
    label_smoothing: float
    clip_grad: float | None

    @staticmethod
    def defaults(kind: str, layers: int, batch: int) -> "Recipe":
        """netgen's ``Recipe::defaults`` for a network of ``layers`` weighted layers at ``batch``."""
        if kind == "modern":
            return Recipe("modern", 0.1 * batch / 128.0, 0.9, True, 5e-4, {"kind": "cosine"}, None, 0.0, None)
        if kind == "paper":
            deep = layers > 50
            return Recipe("paper", math.sqrt(0.1) if deep else 0.1, 0.9, True, 2e-4 if deep else 5e-4,
                          paper_plateau(), 0.0, 0.0, None)
        raise RecipeError(f"unknown recipe '{kind}'; use modern or paper")

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @staticmethod
    def from_dict(d: dict) -> "Recipe":
        return Recipe(**{k: d[k] for k in Recipe.__dataclass_fields__})

    def warmup_steps(self, total: int, per_epoch: int) -> int:
        if self.warmup_epochs is None:
            w = math.ceil(0.03 * total)
        else:
            w = _round(self.warmup_epochs * per_epoch)
        return min(w, total)

    def lr_at(self, t: int, total: int, per_epoch: int, plateau: float) -> float:
        w = self.warmup_steps(total, per_epoch)
        if t < w:
            return self.lr * (t + 1) / w
        k = self.schedule["kind"]
        if k == "cosine":
            span = float(max(total - w, 1))
            p = min(max((t - w) / span, 0.0), 1.0)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * p))
        if k == "step":
            n = sum(1 for e in self.schedule["milestones"] if t >= e * per_epoch)
            return self.lr * self.schedule["gamma"] ** n
        if k == "constant":
            return self.lr
        return self.lr * plateau

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RecipeError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise RecipeError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise RecipeError(f"--weight-decay must be ≥ 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RecipeError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs is not None and not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise RecipeError(f"--warmup-epochs must be ≥ 0, got {self.warmup_epochs}")
        if self.clip_grad is not None and not (math.isfinite(self.clip_grad) and self.clip_grad > 0):
            raise RecipeError(f"--clip-grad must be a positive number, got {self.clip_grad}")
        if self.nesterov and self.momentum == 0.0:
            raise RecipeError("Nesterov momentum needs --momentum > 0 (or pass --nesterov false)")


def _round(x: float) -> int:
    """Rust's ``f64::round`` (half away from zero) for non-negative values."""
    return int(math.floor(x + 0.5))


@dataclass
class PlateauState:
    """State of the plateau rule (kept in ``state.safetensors``)."""

    factor: float = 1.0
    best: float = float("-inf")
    bad: int = 0

    def observe(self, schedule: dict, top1: float) -> bool:
        """Records an evaluation's top-1 (%); true when the rate dropped."""
        if schedule["kind"] != "plateau":
            return False
        if top1 > self.best + schedule["min_delta"]:
            self.best, self.bad = top1, 0
            return False
        self.bad += 1
        if self.bad >= schedule["patience"]:
            self.factor *= schedule["factor"]
            self.bad = 0
            return True
        return False


def weighted_depth(spec: dict) -> int:
    """Weighted layers along the depth (stem conv + each unit's residual convs + fc): netgen's
    ``weighted_depth`` (a CRU unit with its extra 1×1 has 4, any other unit 3)."""
    per = [4 if s["unit"].get("kind") == "cru" and s["unit"].get("extra_conv") else 3 for s in spec["stages"]]
    return 2 + sum(s["depth"] * p for s, p in zip(spec["stages"], per))


def decays(p: torch.Tensor) -> bool:
    """Whether a parameter gets weight decay: conv and fc weights (≥ 2 dimensions)."""
    return p.dim() >= 2


def make_optimizer(params: list[torch.nn.Parameter], r: Recipe) -> torch.optim.SGD:
    """SGD over ``params`` (each once) with the decay split of :func:`decays`."""
    dec = [p for p in params if decays(p)]
    rest = [p for p in params if not decays(p)]
    return torch.optim.SGD([{"params": dec, "weight_decay": r.weight_decay},
                            {"params": rest, "weight_decay": 0.0}],
                           lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, dampening=0.0)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def clip_grad(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Global-norm clipping, netgen's rule: gradients × ``max_norm / (norm + 1e-6)`` when below 1."""
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

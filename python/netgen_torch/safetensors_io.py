"""``.safetensors`` weights shared with netgen: strict loading by name and shape, atomic saving.

The file format is the one netgen reads and writes (``netgen train``'s ``last.safetensors`` /
``best.safetensors``, ``netgen::nn::load_safetensors``): one tensor per state-dict entry, named
as in netgen's ``VarStore`` (see :mod:`netgen_torch.model`), parameters and BN running
statistics. Tensors are read with the ``safetensors`` package, which only parses a JSON header and
raw little-endian data: loading never executes code from the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["LoadReport", "WeightsError", "load_safetensors", "save_safetensors", "read_metadata"]

#: PyTorch's BN step counter, which netgen's BN does not keep: skipped in files, optional in models,
#: never saved.
_SKIPPED_SUFFIX = "num_batches_tracked"


class WeightsError(ValueError):
    """A weight file does not fit the network (names or shapes) or cannot be read."""


@dataclass
class LoadReport:
    """What :func:`load_safetensors` did."""

    loaded: int
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of ``DistributedDataParallel`` / ``DataParallel`` and of
    ``torch.compile`` (their state-dict names carry a ``module.`` / ``_orig_mod.`` prefix that
    netgen's do not)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _short(names: list[str]) -> str:
    head = ", ".join(names[:12])
    return head + (f", … ({len(names)} in all)" if len(names) > 12 else "")


def load_safetensors(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Copies the tensors of ``path`` into ``model``'s state (parameters and buffers) by name.

    ``strict=True``: every state entry of the model must be in the file with the same shape and
    every tensor of the file must belong to the model (PyTorch's ``*.num_batches_tracked``
    counters excepted); otherwise nothing is copied and :class:`WeightsError` lists the missing,
    unexpected and mis-shaped names. ``strict=False``: the entries present in both with equal
    shapes are copied, the rest reported. Values are converted to each entry's dtype and device.
    """
    model = _unwrap(model)
    path = os.fspath(path)
    try:
        src = load_file(path, device="cpu")
    except Exception as e:  # OSError, or safetensors' own SafetensorError
        raise WeightsError(f"cannot read weights from {path}: {e}") from None
    state = model.state_dict(keep_vars=True)
    skipped = sorted(n for n in src if n.endswith(_SKIPPED_SUFFIX) and n not in state)
    for n in skipped:
        del src[n]
    # A model whose BNs keep a saved counter (e.g. after SyncBatchNorm conversion) does not need
    # it from netgen's files.
    missing = sorted(n for n in set(state) - set(src) if not n.endswith(_SKIPPED_SUFFIX))
    unexpected = sorted(set(src) - set(state))
    mismatched = sorted(
        f"{n}: file {list(src[n].shape)}, network {list(t.shape)}"
        for n, t in state.items()
        if n in src and tuple(src[n].shape) != tuple(t.shape)
    )
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"missing in the file: {_short(missing)}")
        if unexpected:
            parts.append(f"not in the network: {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {_short(mismatched)}")
        raise WeightsError(f"cannot load weights from {path}: {'; '.join(parts)}")
    bad = {m.split(":", 1)[0] for m in mismatched}
    loaded = 0
    with torch.no_grad():
        for n, t in state.items():
            if n in src and n not in bad:
                t.copy_(src[n].to(device=t.device, dtype=t.dtype))
                loaded += 1
    return LoadReport(loaded, skipped, missing, unexpected, mismatched)


def save_safetensors(model: nn.Module, path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Writes ``model``'s state dict (netgen's names; each shared tensor once) to ``path``,
    without BN ``num_batches_tracked`` counters (a converted ``SyncBatchNorm`` saves one), which
    netgen's networks do not have.

    Atomic: the bytes go to a temporary file in the same directory, which is synced and renamed
    over ``path``; on any error ``path`` is left as it was and the temporary file removed.
    ``metadata`` (string → string) goes into the safetensors header (netgen puts ``step`` there).
    """
    model = _unwrap(model)
    path = os.fspath(path)
    tensors = {
        n: t.detach().to("cpu").contiguous()
        for n, t in model.state_dict().items()
        if not n.endswith(_SKIPPED_SUFFIX)
    }
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", suffix=".safetensors", dir=d)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors header (e.g. netgen's ``step``)."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise WeightsError(f"cannot read weights from {os.fspath(path)}: {e}") from None

"""Compress PyTorch models with gbtd.

::

    import gbtd.torch
    small, report = gbtd.torch.compress_model(model, method="tucker2", rank_rule="energy:0.9",
                                              example_input=torch.randn(1, 3, 224, 224))
    print(report)

Each selected ``nn.Conv2d`` (dense or grouped) becomes an ``nn.Sequential`` of three convs — 1×1
``in → G·R·r_in`` (groups ``G``), ``kh×kw`` ``G·R·r_in → G·R·r_out`` with the original stride,
padding, dilation and padding mode (groups ``G·R``), 1×1 ``G·R·r_out → out`` (groups ``G``, the
original bias) — where ``G`` is the conv's ``groups`` and each group's kernel is decomposed on its
own (Tucker-2: ``R = 1``; BTD: ``R`` terms; CP of rank ``K``: ``R = K``, ``r_in = r_out = 1``). Each
selected ``nn.Linear`` becomes two ``nn.Linear`` layers from a truncated SVD. The rank rules
(``fixed:a,b``, ``energy:f``, ``ratio:x``, ``budget:f``, ``vbmf``), the decompositions and the
report rows are those of ``gbtd compress`` (one Rust implementation).

Multiply-adds come from one forward pass of ``example_input`` (hooks record each layer's input and
output sizes), counted per sample as torchvision counts them: a conv costs its weights times its
output positions, a linear layer its weights times the vectors it maps. Latency (``benchmark=True``)
is the median of timed forward passes of the same input, before and after, in the same process.
"""
from __future__ import annotations

import copy
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import _gbtd, load as _load, save as _save

__all__ = [
    "CompressionReport",
    "compress_model",
    "layer_info",
    "count_macs",
    "measure_latency",
    "save_compressed",
    "load_compressed",
    "fine_tune",
    "evaluate",
]

METADATA_KEY = "gbtd.compress"


# --- sizes and costs -----------------------------------------------------------------------


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def _forward(model: nn.Module, example_input):
    with torch.no_grad():
        if isinstance(example_input, (tuple, list)):
            return model(*example_input)
        return model(example_input)


def _observe(model: nn.Module, example_input, names: Iterable[str] | None, fn) -> None:
    """One forward pass of ``example_input`` in eval mode, without gradients, calling
    ``fn(name, module, input, output)`` for every conv and linear layer (or those in ``names``);
    the model's mode and hooks are restored afterwards."""
    wanted = None if names is None else set(names)
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: fn(name, mod, i[0], o))
        for name, m in model.named_modules()
        if _is_layer(m) and (wanted is None or name in wanted)
    ]
    was_training = model.training
    model.eval()
    try:
        _forward(model, example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def _positions(mod: nn.Module, x: torch.Tensor, output: torch.Tensor) -> tuple:
    """Positions per sample at a layer's input and output: ``H·W`` for a conv, the number of
    vectors mapped for a linear layer."""
    if isinstance(mod, nn.Conv2d):
        return int(x.shape[-2] * x.shape[-1]), int(output.shape[-2] * output.shape[-1])
    n = int(x.numel() // (x.shape[0] * x.shape[-1])) if x.dim() > 1 else 1
    return n, n


def _record_sizes(model: nn.Module, example_input, names: Iterable[str] | None = None) -> dict:
    """``{name: (input positions, output positions)}`` per sample for every conv and linear
    layer (or those in ``names``), from one forward pass in eval mode."""
    sizes: dict = {}
    _observe(model, example_input, names, lambda name, mod, x, y: sizes.__setitem__(name, _positions(mod, x, y)))
    return sizes


def count_macs(model: nn.Module, example_input) -> int:
    """Multiply-adds per sample of the model's conv and linear layers on ``example_input``
    (one forward pass): ``out_channels·(in_channels/groups)·kh·kw`` per output position of a conv,
    ``in_features·out_features`` per vector of a linear layer — torchvision's count."""
    total = 0

    def add(name, mod, x, y):
        nonlocal total
        _, out_positions = _positions(mod, x, y)
        if isinstance(mod, nn.Conv2d):
            total += mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1] * out_positions
        else:
            total += mod.in_features * mod.out_features * out_positions

    _observe(model, example_input, None, add)
    return total


def measure_latency(model, example_input, runs: int = 20, warmup: int = 3, threads: int | None = None):
    """The median wall time (seconds) of ``runs`` forward passes of ``example_input`` in eval mode
    without gradients, after ``warmup`` passes, with ``threads`` intra-op threads (the current
    setting when ``None``). Given a list of models, they run in alternation (model 0, model 1, …,
    ``runs`` rounds), so that a change in the machine's load affects all alike, and the list of
    their medians is returned."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for m in models:
            for _ in range(warmup):
                _forward(m, example_input)
        times = [[] for _ in models]
        for _ in range(runs):
            for m, t in zip(models, times):
                t0 = time.perf_counter()
                _forward(m, example_input)
                t.append(time.perf_counter() - t0)
        medians = [statistics.median(t) for t in times]
        return medians if isinstance(model, (list, tuple)) else medians[0]
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
        torch.set_num_threads(old)


def layer_info(model: nn.Module, example_input, path: str | os.PathLike | None = None) -> dict:
    """Every conv and linear layer's groups and input/output positions per sample, as the
    ``gbtd.layer_info`` JSON object that ``gbtd compress --layer-info`` reads (written to ``path``
    when given)."""
    sizes = _record_sizes(model, example_input)
    layers = {}
    for name, m in model.named_modules():
        if name in sizes:
            pin, pout = sizes[name]
            layers[name] = {
                "kind": "conv" if isinstance(m, nn.Conv2d) else "linear",
                "groups": int(getattr(m, "groups", 1)),
                "input_positions": pin,
                "output_positions": pout,
            }
    info = {"format": "gbtd.layer_info", "version": 1, "layers": layers}
    if path is not None:
        tmp = f"{os.fspath(path)}.part"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, path)
    return info


# --- the report ----------------------------------------------------------------------------


@dataclass
class CompressionReport:
    """What :func:`compress_model` did.

    ``layers``: one dict per compressed layer (``name``, ``kind``, ``shape``, ``method``,
    ``ranks``, ``terms``, ``groups``, ``relative_error`` = ``‖W − W_f‖/‖W‖``, ``output_error`` =
    the relative error of the layer's output on ``example_input`` (bias excluded), the weights and
    multiply-adds per sample before and after, ``seconds``). ``skipped``: ``(name, reason)`` for
    every selected layer left as it was. Model totals: ``params_*`` (every parameter),
    ``macs_*`` (conv and linear layers, per sample, ``None`` without ``example_input``),
    ``latency_*`` (median seconds per forward pass of ``example_input``, with ``benchmark=True``).
    ``description`` is the ``gbtd.compress`` JSON that :func:`save_compressed` stores.
    """

    method: str
    rank_rule: str
    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    latency_before: float | None = None
    latency_after: float | None = None
    seconds: float = 0.0
    description: str = ""
    unmatched_overrides: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["description"] = json.loads(self.description) if self.description else None
        return d

    def table(self) -> str:
        rows = [["layer", "shape", "ranks", "rel. error", "out. error", "params", "MACs"]]
        for l in self.layers:
            ranks = ",".join(str(r) for r in l["ranks"])
            if l["method"] == "btd":
                ranks = f"{l['terms']}×({ranks})"
            if l["groups"] > 1:
                ranks += f" ×{l['groups']}g"
            macs = "" if l["macs_before"] is None else f"{_big(l['macs_before'])} → {_big(l['macs_after'])}"
            oe = "" if l.get("output_error") is None else f"{l['output_error']:.4f}"
            rows.append(
                [
                    l["name"],
                    "×".join(str(s) for s in l["shape"]),
                    f"{l['method']} {ranks}",
                    f"{l['relative_error']:.4f}",
                    oe,
                    f"{l['params_before']:,} → {l['params_after']:,}",
                    macs,
                ]
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"{self.method} with rank rule {self.rank_rule}: {len(self.layers)} layers compressed, {len(self.skipped)} skipped"]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"model parameters  {self.params_before:,} → {self.params_after:,} ({self.params_before / max(self.params_after, 1):.2f}×)")
        if self.macs_before is not None:
            lines.append(
                f"multiply-adds     {_big(self.macs_before)} → {_big(self.macs_after)} per sample ({self.macs_before / max(self.macs_after, 1):.2f}×)"
            )
        if self.latency_before is not None:
            lines.append(
                f"CPU latency       {self.latency_before * 1e3:.2f} ms → {self.latency_after * 1e3:.2f} ms ({self.latency_before / self.latency_after:.2f}×, median)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _big(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}G"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


# --- building the factorized layers --------------------------------------------------------


def _get(model: nn.Module, name: str) -> nn.Module:
    m = model
    for part in name.split("."):
        m = getattr(m, part)
    return m


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(_get(model, parent) if parent else model, last, new)


def _conv_chain(old: nn.Conv2d, groups: int, terms: int, r_out: int, r_in: int) -> nn.Sequential:
    """The three convs that replace ``old`` (see the module documentation)."""
    g, gr = groups, groups * terms
    kw = dict(device=old.weight.device, dtype=old.weight.dtype)
    reduce = nn.Conv2d(old.in_channels, gr * r_in, 1, groups=g, bias=False, **kw)
    middle = nn.Conv2d(
        gr * r_in,
        gr * r_out,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=gr,
        bias=False,
        padding_mode=old.padding_mode,
        **kw,
    )
    expand = nn.Conv2d(gr * r_out, old.out_channels, 1, groups=g, bias=old.bias is not None, **kw)
    return nn.Sequential(reduce, middle, expand)


def _linear_chain(old: nn.Linear, rank: int) -> nn.Sequential:
    kw = dict(device=old.weight.device, dtype=old.weight.dtype)
    return nn.Sequential(
        nn.Linear(old.in_features, rank, bias=False, **kw),
        nn.Linear(rank, old.out_features, bias=old.bias is not None, **kw),
    )


def _chain_for(old: nn.Module, row: dict) -> nn.Sequential:
    if row["kind"] == "linear":
        return _linear_chain(old, row["ranks"][0])
    return _conv_chain(old, row["groups"], row["terms"], row["rank_out"], row["rank_in"])


def _fill(chain: nn.Sequential, old: nn.Module, factors: Sequence[np.ndarray]) -> None:
    """Copies the factor weights into the chain (shapes checked) and the original bias into its
    last layer."""
    with torch.no_grad():
        for layer, w in zip(chain, factors):
            t = torch.from_numpy(np.ascontiguousarray(w))
            if tuple(t.shape) != tuple(layer.weight.shape):
                raise RuntimeError(f"factor of shape {tuple(t.shape)} for a layer of weight {tuple(layer.weight.shape)}")
            layer.weight.copy_(t.to(layer.weight.dtype))
        if old.bias is not None:
            chain[-1].bias.copy_(old.bias)


def _weight_array(w: torch.Tensor) -> np.ndarray:
    w = w.detach().cpu()
    if w.dtype != torch.float64:
        w = w.float()
    return w.numpy()


def _output_error(old: nn.Module, chain: nn.Sequential, x: torch.Tensor) -> float:
    """``‖y − y'‖/‖y‖`` of the layer and its chain on ``x``, biases left out."""
    with torch.no_grad():
        if isinstance(old, nn.Conv2d):
            y = F.conv2d(x, old.weight, None, old.stride, old.padding, old.dilation, old.groups) if old.padding_mode == "zeros" else old(x) - (0 if old.bias is None else old.bias.view(1, -1, 1, 1))
        else:
            y = F.linear(x, old.weight)
        bias = chain[-1].bias
        yc = chain(x) if bias is None else chain(x) - bias.view(1, -1, *([1] * (y.dim() - 2)))
        n = y.double().norm()
        return float((y.double() - yc.double()).norm() / n) if n > 0 else 0.0


# --- compression ---------------------------------------------------------------------------


def compress_model(
    model: nn.Module,
    method: str = "tucker2",
    rank_rule: str = "energy:0.9",
    example_input=None,
    layers: str | None = None,
    skip: str | None = None,
    n_terms: int | None = None,
    linear: bool = True,
    overrides: dict | None = None,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    random_state: int = 0,
    benchmark: bool = False,
    benchmark_runs: int = 20,
    threads: int | None = None,
    inplace: bool = False,
):
    """Replaces each selected conv (and linear) layer of ``model`` by its factorized chain;
    returns ``(compressed_model, CompressionReport)``.

    - ``method``: ``'tucker2'``, ``'cp'`` or ``'btd'`` (with ``n_terms``) for the convs; linear
      layers always use a truncated SVD.
    - ``rank_rule``: ``'fixed:a,b'`` (``'fixed:K'`` for CP), ``'energy:0.9'``, ``'ratio:4'``,
      ``'budget:0.25'`` or ``'vbmf'``; ``overrides`` maps module names to another rule or
      ``'skip'``. ``budget`` shares one parameter budget among all selected layers.
    - ``layers`` / ``skip``: regular expressions searched in the module names (``re.search``);
      ``linear=False`` leaves linear layers alone.
    - ``example_input``: a batch (or tuple of inputs) for one forward pass that gives each
      layer's sizes (real multiply-adds) and its output error; ``benchmark=True`` also times
      ``benchmark_runs`` forward passes of the original and the compressed model in alternation
      (medians), with ``threads`` intra-op threads.
    - ``n_iter_max``, ``tol``, ``random_state``: each decomposition's sweeps, tolerance and seed.

    The original model is left unchanged (a deep copy is compressed) unless ``inplace``. Grouped
    convs are decomposed group by group; a depthwise conv (one input channel per group) is
    skipped with the reason, as is every layer whose chain would not be smaller. Weights in
    ``float16``/``bfloat16`` are decomposed in ``float32`` and the factors cast back.
    """
    t0 = time.perf_counter()
    if method not in ("tucker2", "cp", "btd"):
        raise ValueError(f"method must be 'tucker2', 'cp' or 'btd', got {method!r}")
    if method == "btd" and not n_terms:
        raise ValueError("method='btd' needs n_terms, the number of block terms (e.g. n_terms=4)")
    if method != "btd" and n_terms is not None:
        raise ValueError("n_terms applies to method='btd' only")
    sel = re.compile(layers) if layers else None
    rej = re.compile(skip) if skip else None
    original = model
    if example_input is None and benchmark:
        raise ValueError("benchmark=True needs an example_input to time")
    # The uncompressed model, kept for the latency comparison at the end.
    reference = (copy.deepcopy(model) if inplace else model) if benchmark else None
    model = model if inplace else copy.deepcopy(model)
    chosen = []
    for name, m in model.named_modules():
        if not name or not _is_layer(m) or (isinstance(m, nn.Linear) and not linear):
            continue
        if (sel is not None and not sel.search(name)) or (rej is not None and rej.search(name)):
            continue
        chosen.append((name, m))
    report = CompressionReport(method=method, rank_rule=rank_rule)
    report.params_before = sum(p.numel() for p in model.parameters())
    sizes: dict = {}
    inputs: dict = {}
    if example_input is not None:
        report.macs_before = count_macs(model, example_input)
        sizes = _record_sizes(model, example_input, [n for n, _ in chosen])
        inputs = _capture_inputs(model, example_input, [n for n, _ in chosen])
    metas, weights = [], []
    for name, m in chosen:
        pin, pout = sizes.get(name, (None, None))
        metas.append(
            {
                "name": name,
                "shape": list(m.weight.shape),
                "dtype": str(m.weight.dtype).replace("torch.", ""),
                "bias": m.bias is not None,
                "groups": int(getattr(m, "groups", 1)),
                "input_positions": pin,
                "output_positions": pout,
            }
        )
        weights.append(_weight_array(m.weight))
    if not metas:
        raise ValueError("no conv or linear layer selected (check layers=, skip= and linear=)")
    out = _gbtd.compress_layers(
        metas,
        weights,
        method,
        int(n_terms or 0),
        rank_rule,
        None if overrides is None else json.dumps(overrides),
        int(n_iter_max),
        float(tol),
        int(random_state),
        type(original).__name__,
    )
    for (name, old), res in zip(chosen, out["layers"]):
        if "skipped" in res:
            report.skipped.append((name, res["skipped"]))
            continue
        row = dict(res["report"])
        chain = _chain_for(old, row)
        _fill(chain, old, res["factors"])
        row["output_error"] = _output_error(old, chain, inputs[name]) if name in inputs else None
        _set(model, name, chain)
        report.layers.append(row)
    report.unmatched_overrides = list(out["unmatched_overrides"])
    report.description = out["description"]
    report.params_after = sum(p.numel() for p in model.parameters())
    if example_input is not None:
        report.macs_after = count_macs(model, example_input)
        if benchmark:
            report.latency_before, report.latency_after = measure_latency(
                [reference, model], example_input, benchmark_runs, threads=threads
            )
    report.seconds = time.perf_counter() - t0
    return model, report


def _capture_inputs(model: nn.Module, example_input, names: Sequence[str]) -> dict:
    """The input each named layer receives on ``example_input`` (eval mode)."""
    got: dict = {}
    _observe(model, example_input, names, lambda name, mod, x, y: got.__setitem__(name, x.detach()))
    return got


# --- files ---------------------------------------------------------------------------------


def save_compressed(model: nn.Module, report: CompressionReport, path: str | os.PathLike) -> None:
    """Writes the compressed model's state dict and the ``gbtd.compress`` description as a
    ``.safetensors`` file (atomically), the format ``gbtd compress`` writes: ``gbtd verify`` checks
    it against the original and :func:`load_compressed` rebuilds it."""
    _save(path, model.state_dict(), {METADATA_KEY: report.description, "format": "pt"})


def load_compressed(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Loads a compressed checkpoint (written by :func:`save_compressed` or ``gbtd compress``)
    into ``model``, an instance of the original, uncompressed architecture: each layer the
    ``gbtd.compress`` description lists is replaced by its chain (shapes from the description,
    stride, padding, dilation and padding mode from the original layer), then every tensor is
    loaded with ``load_state_dict(strict=strict)``. Nothing in the file is executed."""
    meta = _gbtd.read_metadata(os.fspath(path))
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; give a file written by gbtd compress or save_compressed")
    description = json.loads(meta[METADATA_KEY])
    for entry in description["layers"]:
        old = _get(model, entry["name"])
        chain_desc = entry["chain"]
        if entry.get("kind", "conv") == "linear":
            chain = _linear_chain(old, int(chain_desc[0]["out_features"]))
        else:
            g = int(chain_desc[0]["groups"])
            gr = int(chain_desc[1]["groups"])
            r_in = int(chain_desc[0]["out_channels"]) // gr
            r_out = int(chain_desc[1]["out_channels"]) // gr
            chain = _conv_chain(old, g, gr // g, r_out, r_in)
        _set(model, entry["name"], chain)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _load(path).items()}
    model.load_state_dict(tensors, strict=strict)
    return model


# --- short training and evaluation ----------------------------------------------------------


def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy (fraction) of ``model`` over ``loader``'s ``(inputs, labels)`` batches."""
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            pred = model(x.to(device)).argmax(dim=1).cpu()
            right += int((pred == y).sum())
            total += int(y.numel())
    return right / max(total, 1)


def fine_tune(
    model: nn.Module,
    loader,
    epochs: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    max_steps: int | None = None,
) -> list:
    """A short fine-tuning run: SGD with Nesterov momentum and a cosine learning rate over
    ``epochs`` passes of ``loader`` (or ``max_steps`` steps), cross-entropy loss. Returns the
    training loss of every step."""
    model.to(device).train()
    steps = epochs * len(loader) if max_steps is None else max_steps
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    step = 0
    while step < steps:
        for x, y in loader:
            if step >= steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
            step += 1
    model.eval()
    return losses

"""netgen's architecture spec, read on the Python side.

A spec is the JSON document netgen writes (``netgen emit --json`` prints ``{"spec": {...},
"params": ..., ...}``; a run directory's ``spec.json`` holds the bare spec); a ``.toml`` file in
netgen's TOML spec format is read too. The fields are those of netgen's ``NetSpec``:

- ``name``, ``in_channels``, ``input_size``, ``classes``, ``preact`` (pre-activation units and a
  final BN-ReLU before pooling), ``separate_projection_bn`` (default false);
- ``stem``: ``{"kind": "imagenet" | "small", "width": w}``;
- ``stages``: a list of ``{"depth", "width", "stride", "unit"}`` where ``unit`` is
  ``{"kind": "aggregated", "mid", "groups"}`` or
  ``{"kind": "cru", "mid", "groups", "share", "extra_conv"}``.

:func:`load_spec` parses and validates (the same rules as netgen's ``NetSpec::validate``, with
one-line messages that say what would be valid); :func:`units` lists every residual unit with its
widths, stride, projection flag and CRU share group, exactly as netgen's ``NetSpec::units``.
Reading a spec never executes code from the file (JSON / TOML parsers only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["SpecError", "UnitIo", "load_spec", "units", "conv_out_size"]

#: Limits of netgen's ``NetSpec::validate``.
MAX_WIDTH = 1 << 16
MAX_INPUT = 1 << 13
MAX_DEPTH = 1 << 12
MAX_STAGES = 16

_TOP_KEYS = {
    "name",
    "in_channels",
    "input_size",
    "classes",
    "preact",
    "stem",
    "stages",
    "separate_projection_bn",
}
_STAGE_KEYS = {"depth", "width", "stride", "unit"}
_UNIT_KEYS = {
    "aggregated": {"kind", "mid", "groups"},
    "cru": {"kind", "mid", "groups", "share", "extra_conv"},
}


class SpecError(ValueError):
    """The spec cannot be read or describes an invalid network; the message says why."""


@dataclass(frozen=True)
class UnitIo:
    """One residual unit of a spec (netgen's ``UnitIo``)."""

    stage: int
    index: int
    in_width: int
    out_width: int
    stride: int
    projection: bool
    share_group: int | None


def conv_out_size(n: int, k: int, stride: int, pad: int) -> int | None:
    """``floor((n + 2 pad - k) / stride) + 1``, or None when the window does not fit."""
    padded = n + 2 * pad
    if stride == 0 or padded < k:
        return None
    return (padded - k) // stride + 1


def _read_source(spec: Any) -> dict:
    """The spec as a dict from a dict, a JSON string, or a path (JSON, or TOML by extension)."""
    if isinstance(spec, Mapping):
        doc = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        text_or_path = os.fspath(spec)
        if isinstance(spec, str) and text_or_path.lstrip().startswith("{"):
            try:
                doc = json.loads(text_or_path)
            except json.JSONDecodeError as e:
                raise SpecError(f"cannot parse spec JSON text: {e}") from None
        else:
            path = text_or_path
            # A run directory: its spec.json.
            if os.path.isdir(path):
                path = os.path.join(path, "spec.json")
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise SpecError(
                    f"cannot read spec file {path}: {e.strerror or e}; give the path of a "
                    "`netgen emit --json` output or of a run's spec.json"
                ) from None
            try:
                if path.lower().endswith(".toml"):
                    import tomllib

                    doc = tomllib.loads(raw.decode("utf-8"))
                else:
                    doc = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise SpecError(f"cannot parse spec file {path}: {e}") from None
    else:
        raise SpecError(
            f"a spec is a dict, a JSON string or a path, not {type(spec).__name__}"
        )
    if not isinstance(doc, dict):
        raise SpecError("a spec must be a JSON object")
    # `netgen emit --json` wraps the spec with its counts.
    if "spec" in doc and isinstance(doc["spec"], dict):
        doc = doc["spec"]
    return doc


def _int(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise SpecError(f"{where} must be a non-negative integer, got {v!r}")
    return v


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"{where} must be true or false, got {v!r}")
    return v


def _keys(where: str, d: Any, allowed: set, required: set) -> dict:
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(d))
    if missing:
        raise SpecError(f"{where}: missing field(s) {', '.join(missing)}")
    return d


def _normalise(doc: dict) -> dict:
    """Type-checks every field and returns a clean copy (``separate_projection_bn`` defaulted)."""
    _keys("spec", doc, _TOP_KEYS, _TOP_KEYS - {"separate_projection_bn"})
    name = doc["name"]
    if not isinstance(name, str):
        raise SpecError(f"spec name must be a string, got {name!r}")
    stem = _keys("stem", doc["stem"], {"kind", "width"}, {"kind", "width"})
    if stem["kind"] not in ("imagenet", "small"):
        raise SpecError(f"stem kind {stem['kind']!r} is unknown; valid: imagenet, small")
    stages_in = doc["stages"]
    if not isinstance(stages_in, list):
        raise SpecError("stages must be a list")
    stages = []
    for si, s in enumerate(stages_in):
        where = f"stage {si}"
        _keys(where, s, _STAGE_KEYS, _STAGE_KEYS)
        u = s["unit"]
        if not isinstance(u, dict) or u.get("kind") not in _UNIT_KEYS:
            kind = u.get("kind") if isinstance(u, dict) else u
            raise SpecError(f"{where}: unit kind {kind!r} is unknown; valid: aggregated, cru")
        allowed = _UNIT_KEYS[u["kind"]]
        _keys(f"{where} unit", u, allowed, allowed)
        unit = {"kind": u["kind"], "mid": _int(f"{where} mid", u["mid"]),
                "groups": _int(f"{where} groups", u["groups"])}
        if u["kind"] == "cru":
            unit["share"] = _int(f"{where} share", u["share"])
            unit["extra_conv"] = _bool(f"{where} extra_conv", u["extra_conv"])
        stages.append({
            "depth": _int(f"{where} depth", s["depth"]),
            "width": _int(f"{where} width", s["width"]),
            "stride": _int(f"{where} stride", s["stride"]),
            "unit": unit,
        })
    return {
        "name": name,
        "in_channels": _int("in_channels", doc["in_channels"]),
        "input_size": _int("input_size", doc["input_size"]),
        "classes": _int("classes", doc["classes"]),
        "preact": _bool("preact", doc["preact"]),
        "stem": {"kind": stem["kind"], "width": _int("stem width", stem["width"])},
        "stages": stages,
        "separate_projection_bn": _bool(
            "separate_projection_bn", doc.get("separate_projection_bn", False)
        ),
    }


def _stem_out(spec: dict, n: int) -> int | None:
    if spec["stem"]["kind"] == "imagenet":
        m = conv_out_size(n, 7, 2, 3)
        return None if m is None else conv_out_size(m, 3, 2, 1)
    return conv_out_size(n, 3, 1, 1)


def _validate(spec: dict) -> None:
    """netgen's ``NetSpec::validate``: the same rules, in the same order."""
    if spec["in_channels"] == 0:
        raise SpecError("in_channels is 0; use 3 for RGB images or 1 for grayscale")
    if spec["classes"] == 0:
        raise SpecError("classes is 0; the fc head needs at least 1 class (e.g. 10 or 1000)")
    if spec["stem"]["width"] == 0:
        raise SpecError("stem width is 0; use a positive width such as 64 (ImageNet) or 16/64 (small)")
    stages = spec["stages"]
    if not stages:
        raise SpecError("the network has no stages; give at least one stage")
    if len(stages) > MAX_STAGES:
        raise SpecError(f"{len(stages)} stages; at most {MAX_STAGES} are supported")
    if spec["input_size"] > MAX_INPUT:
        raise SpecError(f"input size {spec['input_size']} is too large; valid: 1..={MAX_INPUT}")
    for what, v in (("in_channels", spec["in_channels"]), ("classes", spec["classes"]),
                    ("stem width", spec["stem"]["width"])):
        if v > MAX_WIDTH:
            raise SpecError(f"{what} = {v} is too large; valid: 1..={MAX_WIDTH}")
    n = _stem_out(spec, spec["input_size"])
    if not n:
        raise SpecError(f"input size {spec['input_size']} is too small for the {spec['stem']['kind']} stem")
    total = (4 if spec["stem"]["kind"] == "imagenet" else 1)
    for s in stages:
        total *= min(max(s["stride"], 1), MAX_WIDTH)
    if spec["input_size"] < total:
        raise SpecError(
            f"input size {spec['input_size']} is too small: the stem and stage strides reduce the "
            f"input {total}-fold, so the smallest input is {total}"
        )
    for si, s in enumerate(stages):
        name = f"conv{si + 2} (stage {si})"
        u = s["unit"]
        if s["depth"] == 0:
            raise SpecError(f"{name}: depth is 0; every stage needs at least 1 unit")
        if s["width"] == 0:
            raise SpecError(f"{name}: width is 0; use a positive output width")
        if s["stride"] == 0:
            raise SpecError(f"{name}: stride is 0; use 1 (keep size) or 2 (halve)")
        if s["depth"] > MAX_DEPTH:
            raise SpecError(f"{name}: depth {s['depth']} is too large; valid: 1..={MAX_DEPTH}")
        for what, v in (("width", s["width"]), ("bottleneck width (mid)", u["mid"]),
                        ("stride", s["stride"])):
            if v > MAX_WIDTH:
                raise SpecError(f"{name}: {what} = {v} is too large; valid: 1..={MAX_WIDTH}")
        if u["mid"] == 0:
            raise SpecError(f"{name}: bottleneck width (mid) is 0; it must be R·d* ≥ 1")
        if u["groups"] == 0:
            raise SpecError(f"{name}: groups (R) is 0; use R ≥ 1 (1 = ResNet bottleneck)")
        if u["mid"] % u["groups"]:
            raise SpecError(
                f"{name}: groups R = {u['groups']} does not divide the bottleneck width {u['mid']}"
            )
        if u["kind"] == "cru":
            if not spec["preact"]:
                raise SpecError(
                    f"{name}: CRU units are pre-activation (BN-ReLU-conv) as released; set preact = true"
                )
            if not 1 <= u["share"] <= s["depth"]:
                raise SpecError(
                    f"{name}: share group size {u['share']} is invalid; use 1 ≤ share ≤ {s['depth']} "
                    "(the stage depth)"
                )
        m = conv_out_size(n, 3, s["stride"], 1)
        if not m:
            raise SpecError(
                f"{name}: the feature map vanishes (input {n}×{n}, stride {s['stride']}); use a "
                "larger input or stride 1"
            )
        n = m


def load_spec(spec: Any) -> dict:
    """Reads, type-checks and validates a spec (dict, JSON text, a path, or a run directory,
    whose ``spec.json`` is read; see the module docs).

    Returns a plain dict with every field of netgen's ``NetSpec``. Raises :class:`SpecError`
    with a one-line message on bad input.
    """
    out = _normalise(_read_source(spec))
    _validate(out)
    return out


def units(spec: dict) -> list[UnitIo]:
    """Every unit of a validated spec, in order (netgen's ``NetSpec::units``).

    Unit ``i`` of stage ``s`` reads ``in_width`` channels (the previous stage's width, or the
    stem's, for ``i = 0``; the stage width otherwise) at stride ``stride`` (the stage stride for
    ``i = 0``, else 1); only a stage's first unit may have a projection shortcut (stride ≠ 1 or
    a width change). CRU units ``[k·L, (k+1)·L)`` form share group ``k``.
    """
    out = []
    w = spec["stem"]["width"]
    for si, s in enumerate(spec["stages"]):
        u = s["unit"]
        for i in range(s["depth"]):
            in_width = w if i == 0 else s["width"]
            stride = s["stride"] if i == 0 else 1
            out.append(
                UnitIo(
                    stage=si,
                    index=i,
                    in_width=in_width,
                    out_width=s["width"],
                    stride=stride,
                    projection=i == 0 and (stride != 1 or in_width != s["width"]),
                    share_group=i // u["share"] if u["kind"] == "cru" else None,
                )
            )
        w = s["width"]
    return out

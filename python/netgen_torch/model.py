"""netgen's networks as PyTorch modules, with netgen's tch ``VarStore`` names as state-dict keys.

:func:`from_spec` builds the network of a netgen spec (see :mod:`netgen_torch.spec`): a stem, the
stages of residual units, and a head. All shapes are PyTorch's: inputs ``(N, C, H, W)``, conv
weights ``(out, in / groups, k, k)``; every conv is bias-free with padding ``k // 2``.

Block kinds and their state-dict names (``layer{s}`` is stage ``s``, numbered from 1; ``{i}`` the
unit index in the stage, from 0):

- stem: ``conv1`` (7×7/2 for the ImageNet stem, then 3×3/2 max pool with padding 1; 3×3/1 for
  small 28/32-px images) → ``bn1`` → ReLU (pre-activation nets keep it too);
- post-activation aggregated unit (torchvision ``Bottleneck``, R = groups): ``conv1`` 1×1 →
  ``bn1``-ReLU → ``conv2`` 3×3 (stride, groups R) → ``bn2``-ReLU → ``conv3`` 1×1 → ``bn3``;
  projection ``downsample.0`` (1×1 at the stride) → ``downsample.1`` (BN); ReLU after the sum;
- pre-activation aggregated unit: ``bn1``-ReLU → ``conv1`` → ``bn2``-ReLU → ``conv2`` (stride,
  groups) → ``bn3``-ReLU → ``conv3``; projection ``downsample`` (1×1 at the stride) of the
  ``bn1``-ReLU output, or, with ``separate_projection_bn``, of its own ``bn_downsample``-ReLU of
  the unit input; no ReLU after the sum;
- collective residual unit (CRU): [first unit with a projection: ``bn_proj_branch``-ReLU →
  ``conv_proj`` 1×1 (in → width) at stride 1, the branch input] → ``bn_reduce``-ReLU → the share
  group's ``layer{s}.share{k}.conv_reduce`` 1×1 (width → D) → ``layer{s}.share{k}.conv_grouped``
  3×3 (stride, groups R; no BN-ReLU before it) → [``bn_extra``-ReLU → ``conv_extra`` 1×1 D → D]
  → ``bn_expand``-ReLU → ``conv_expand`` 1×1 (D → width); shortcut ``bn_proj_shortcut``-ReLU →
  the SAME ``conv_proj`` weight at the stage stride; no ReLU after the sum;
- head: [``final_bn``-ReLU, pre-activation nets] → global average pool → ``fc`` (with bias).

Shared tensors
--------------
netgen writes a tensor used in several places once, under one name. Here each such tensor is an
``nn.Parameter`` registered in exactly ONE module, so ``state_dict()``, ``parameters()`` and
``load_state_dict(strict=True)`` see it once, under netgen's name, with no override of PyTorch's
state-dict machinery:

- a CRU share group's 1×1 and grouped 3×3 live in the container ``layer{s}.share{k}``
  (:class:`ShareGroup`, a child of the stage next to the units ``layer{s}.0``, ``layer{s}.1``, …);
  each unit of the group holds an unregistered reference to that container and convolves with its
  weights functionally (``F.conv2d``) at its own stride, so every unit of the group uses the very
  same ``nn.Parameter`` objects (``unit.reduce_weight is other.reduce_weight``) and autograd sums
  the gradients of all uses into them;
- the first CRU unit's ``conv_proj`` is one :class:`SharedConv` of that unit, applied twice (stride
  1 for the branch, the stage stride for the shortcut).

BatchNorm is PyTorch's ``BatchNorm2d`` (momentum 0.1, ε = 1e-5, as netgen's) whose
``num_batches_tracked`` counter, which netgen does not keep (it only matters for momentum None), is
left out of the state dict; a state dict that has one (PyTorch's own) still loads.
``SyncBatchNorm.convert_sync_batchnorm`` converts these layers like any other BN.

Initialisation follows netgen's (torchvision's): convs Kaiming-normal (fan-out, ReLU gain), BN
γ = 1, β = 0, fc weight and bias uniform in ±1/√in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .spec import load_spec, units

__all__ = [
    "BatchNorm2d",
    "SharedConv",
    "ShareGroup",
    "PostActUnit",
    "PreActUnit",
    "CruUnit",
    "Stage",
    "NetgenNet",
    "from_spec",
    "count_parameters",
]


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (momentum 0.1, ε = 1e-5) whose ``num_batches_tracked`` is not saved.

    State-dict entries: ``weight`` (γ), ``bias`` (β), ``running_mean``, ``running_var`` — exactly
    netgen's. The step counter still exists (non-persistent: PyTorch's BN code and
    ``SyncBatchNorm.convert_sync_batchnorm`` expect it) but only matters for momentum None; a
    ``num_batches_tracked`` entry in a loaded state dict is accepted and ignored.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=1e-5, momentum=0.1)
        self.register_buffer("num_batches_tracked", self.num_batches_tracked, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        # Skip _NormBase's version handling, which would re-insert the counter.
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing_keys, unexpected_keys, error_msgs)


def _conv_init(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    c = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    _conv_init(c.weight)
    return c


class SharedConv(nn.Module):
    """A bias-free k×k conv weight ``(out, in / groups, k, k)`` applied at a stride chosen per use.

    ``forward(x, stride)`` computes ``F.conv2d(x, weight, stride, padding = k // 2, groups)``.
    """

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        if cin % groups or cout % groups:
            raise ValueError(f"a conv {cin}→{cout} needs groups ({groups}) dividing both")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, k, k))
        _conv_init(self.weight)

    def forward(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        k = self.weight.shape[-1]
        return F.conv2d(x, self.weight, None, stride, k // 2, 1, self.groups)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i * self.groups}, {o}, kernel_size={k}, groups={self.groups}, shared"


class ShareGroup(nn.Module):
    """The tensors of one CRU share group (``layer{s}.share{k}``): ``conv_reduce`` 1×1
    ``(D, width, 1, 1)`` and ``conv_grouped`` 3×3 ``(D, D / R, 3, 3)``, used by every unit of the
    group."""

    def __init__(self, width: int, mid: int, groups: int) -> None:
        super().__init__()
        self.conv_reduce = SharedConv(width, mid, 1)
        self.conv_grouped = SharedConv(mid, mid, 3, groups)


class PostActUnit(nn.Module):
    """Post-activation aggregated unit (torchvision ``Bottleneck``):
    ``ReLU(bn3(conv3(ReLU(bn2(conv2(ReLU(bn1(conv1(x)))))))) + S(x))``."""

    def __init__(self, cin: int, width: int, mid: int, groups: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = _conv(cin, mid, 1)
        self.bn1 = BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups)
        self.bn2 = BatchNorm2d(mid)
        self.conv3 = _conv(mid, width, 1)
        self.bn3 = BatchNorm2d(width)
        self.downsample = (
            nn.Sequential(_conv(cin, width, 1, stride), BatchNorm2d(width)) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s, inplace=True)


class PreActUnit(nn.Module):
    """Pre-activation aggregated unit: ``a = ReLU(bn1(x))``,
    ``F = conv3(ReLU(bn3(conv2(ReLU(bn2(conv1(a)))))))``, ``y = F + S`` with S the identity, a 1×1
    at the stride of ``a``, or (``separate_projection_bn``) of ``ReLU(bn_downsample(x))``."""

    def __init__(self, cin: int, width: int, mid: int, groups: int, stride: int, projection: bool,
                 separate_projection_bn: bool):
        super().__init__()
        self.bn1 = BatchNorm2d(cin)
        self.conv1 = _conv(cin, mid, 1)
        self.bn2 = BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups)
        self.bn3 = BatchNorm2d(mid)
        self.conv3 = _conv(mid, width, 1)
        self.bn_downsample = BatchNorm2d(cin) if projection and separate_projection_bn else None
        self.downsample = _conv(cin, width, 1, stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x), inplace=False)
        if self.downsample is None:
            s = x
        elif self.bn_downsample is None:
            s = self.downsample(a)
        else:
            s = self.downsample(F.relu(self.bn_downsample(x)))
        y = self.conv1(a)
        y = self.conv2(F.relu(self.bn2(y), inplace=True))
        y = self.conv3(F.relu(self.bn3(y), inplace=True))
        return y + s


class CruUnit(nn.Module):
    """Collective residual unit. The share group's tensors are NOT registered here (the stage
    registers the :class:`ShareGroup` once); the unit keeps a plain reference and convolves with
    them at its own stride. See the module docs for the layer order."""

    def __init__(self, cin: int, width: int, mid: int, groups: int, stride: int, projection: bool,
                 extra_conv: bool, share: ShareGroup):
        super().__init__()
        self.stride = stride
        if projection:
            self.bn_proj_branch = BatchNorm2d(cin)
            self.conv_proj = SharedConv(cin, width, 1)
            self.bn_proj_shortcut = BatchNorm2d(cin)
        else:
            self.bn_proj_branch = self.conv_proj = self.bn_proj_shortcut = None
        self.bn_reduce = BatchNorm2d(width)
        if extra_conv:
            self.bn_extra = BatchNorm2d(mid)
            self.conv_extra = _conv(mid, mid, 1)
        else:
            self.bn_extra = self.conv_extra = None
        self.bn_expand = BatchNorm2d(mid)
        self.conv_expand = _conv(mid, width, 1)
        # object.__setattr__ keeps nn.Module from registering the group a second time.
        object.__setattr__(self, "share", share)

    @property
    def reduce_weight(self) -> nn.Parameter:
        """The share group's 1×1 weight ``(D, width, 1, 1)`` (one object for the whole group)."""
        return self.share.conv_reduce.weight

    @property
    def grouped_weight(self) -> nn.Parameter:
        """The share group's grouped 3×3 weight ``(D, D / R, 3, 3)`` (one object for the group)."""
        return self.share.conv_grouped.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_proj is None:
            b, s = x, x
        else:
            b = self.conv_proj(F.relu(self.bn_proj_branch(x)), 1)
            s = self.conv_proj(F.relu(self.bn_proj_shortcut(x)), self.stride)
        y = self.share.conv_reduce(F.relu(self.bn_reduce(b)), 1)
        y = self.share.conv_grouped(y, self.stride)
        if self.conv_extra is not None:
            y = self.conv_extra(F.relu(self.bn_extra(y), inplace=True))
        y = self.conv_expand(F.relu(self.bn_expand(y), inplace=True))
        return y + s


class Stage(nn.Module):
    """A stage ``layer{s}``: units ``0, 1, …`` in order, and for CRU stages the share groups
    ``share0, share1, …`` (registered here once; the units only reference them).

    ``stage[i]`` is unit ``i``; ``len(stage)`` the number of units; iterating yields the units.
    """

    def __init__(self) -> None:
        super().__init__()
        self._n_units = 0

    def add_unit(self, unit: nn.Module) -> None:
        self.add_module(str(self._n_units), unit)
        self._n_units += 1

    def add_share_group(self, k: int, group: ShareGroup) -> None:
        self.add_module(f"share{k}", group)

    def __len__(self) -> int:
        return self._n_units

    def __getitem__(self, i: int) -> nn.Module:
        if not -self._n_units <= i < self._n_units:
            raise IndexError(f"unit {i} of a stage of {self._n_units}")
        return self._modules[str(i % self._n_units)]

    def __iter__(self):
        return (self[i] for i in range(self._n_units))

    def share_groups(self) -> list[ShareGroup]:
        """The share groups of a CRU stage, in order (empty for other stages)."""
        return [m for n, m in self._modules.items() if n.startswith("share")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self:
            x = u(x)
        return x


class NetgenNet(nn.Module):
    """A network built from a netgen spec: stem → stages ``layer1 …`` → head (see module docs).

    ``forward(x)``: ``(N, in_channels, H, W)`` → logits ``(N, classes)``. ``self.spec`` is the
    validated spec dict.
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        stem = spec["stem"]
        w = stem["width"]
        if stem["kind"] == "imagenet":
            self.conv1 = _conv(spec["in_channels"], w, 7, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = _conv(spec["in_channels"], w, 3, 1)
            self.maxpool = None
        self.bn1 = BatchNorm2d(w)
        stages = [Stage() for _ in spec["stages"]]
        shares: dict[tuple[int, int], ShareGroup] = {}
        for u in units(spec):
            st = spec["stages"][u.stage]
            kind = st["unit"]
            mid, groups = kind["mid"], kind["groups"]
            args = (u.in_width, u.out_width, mid, groups, u.stride, u.projection)
            if kind["kind"] == "cru":
                key = (u.stage, u.share_group)
                if key not in shares:
                    shares[key] = ShareGroup(u.out_width, mid, groups)
                    stages[u.stage].add_share_group(u.share_group, shares[key])
                unit = CruUnit(*args, kind["extra_conv"], shares[key])
            elif spec["preact"]:
                unit = PreActUnit(*args, spec["separate_projection_bn"])
            else:
                unit = PostActUnit(*args)
            stages[u.stage].add_unit(unit)
        self.num_stages = len(stages)
        for si, s in enumerate(stages):
            self.add_module(f"layer{si + 1}", s)
        final = spec["stages"][-1]["width"]
        self.final_bn = BatchNorm2d(final) if spec["preact"] else None
        self.fc = nn.Linear(final, spec["classes"])
        bound = 1.0 / final ** 0.5
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.uniform_(self.fc.bias, -bound, bound)

    def stages(self) -> list[Stage]:
        """The stages ``layer1, layer2, …`` in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages, [final BN-ReLU], global average pool → ``(N, final width)``."""
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.maxpool is not None:
            y = self.maxpool(y)
        for s in self.stages():
            y = s(y)
        if self.final_bn is not None:
            y = F.relu(self.final_bn(y), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def from_spec(spec: Any) -> NetgenNet:
    """Builds the PyTorch network of a netgen spec.

    ``spec``: a dict, a JSON string, or the path of a ``netgen emit --json`` output, a run's
    ``spec.json`` (or the run directory itself) or a TOML spec. The state-dict names and shapes
    are netgen's, so :func:`netgen_torch.load_safetensors` loads netgen's weights strictly (and
    netgen loads :func:`netgen_torch.save_safetensors`'s). Raises :class:`netgen_torch.SpecError`
    on a bad spec.
    """
    return NetgenNet(load_spec(spec))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars, every parameter object counted once (a CRU share group's
    tensors count once, as in netgen's ``trainable_param_count``). BN running statistics are
    buffers and do not count."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

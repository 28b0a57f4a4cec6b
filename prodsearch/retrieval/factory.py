"""``create_embedder``: one entry point above the builders, as timm's ``_factory.py`` sits above its
models. A name builds an ImageNet embedder (:mod:`.embedder`), or an ensemble of them
(:mod:`.ensemble`) where it lists several joined by ``+``; a path loads a trained one
(:mod:`.checkpoint`). Those build on :mod:`.embedder`: no module imports one above it.
"""

from __future__ import annotations

import os

from prodsearch.choices import DEFAULT_MODEL, DEFAULT_POOLING
from prodsearch.errors import UnknownModelError
from prodsearch.retrieval.checkpoint import load_embedder
from prodsearch.retrieval.embedder import Embedder, build_embedder, parse_model_name
from prodsearch.retrieval.ensemble import EnsembleEmbedder, build_ensemble


def is_checkpoint_path(name: str | os.PathLike) -> bool:
    name = os.fspath(name)
    return name.endswith((".pt", ".pth")) or os.sep in name or os.path.isfile(name)


def create_embedder(
    name: str | os.PathLike = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    embed_dim: int | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    pooling: str = DEFAULT_POOLING,
) -> Embedder | EnsembleEmbedder:
    """An embedder by model name (see :func:`~prodsearch.retrieval.embedder.build_embedder` for the
    options; ``NAME@SIZE`` for its input size, ``A+B@SIZE`` for an ensemble, ``pooling="crow"`` for
    object-focused pooling), or the trained one a checkpoint file holds (with its own pooling)."""
    if is_checkpoint_path(name):
        embedder = load_embedder(name)
        if pooling not in (DEFAULT_POOLING, embedder.config.pooling):
            raise UnknownModelError(f"the checkpoint {name} pools with {embedder.config.pooling!r}, not {pooling!r}: "
                                    "a checkpoint keeps the pooling it was made with")
        return embedder
    members = parse_model_name(os.fspath(name))
    if len(members) > 1:
        return build_ensemble(members, pretrained=pretrained, embed_dim=embed_dim, img_size=img_size,
                              crop_pct=crop_pct, pooling=pooling)
    return build_embedder(os.fspath(name), pretrained=pretrained, embed_dim=embed_dim, img_size=img_size,
                          crop_pct=crop_pct, pooling=pooling)

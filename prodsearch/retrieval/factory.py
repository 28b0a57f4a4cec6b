"""``create_embedder``: one entry point above the builders, as timm's ``_factory.py`` sits above its
models. A name builds an ImageNet embedder (:mod:`.embedder`); a path loads a trained one
(:mod:`.checkpoint`), which itself builds on :mod:`.embedder`: no module imports one above it.
"""

from __future__ import annotations

import os

from prodsearch.choices import DEFAULT_MODEL
from prodsearch.retrieval.checkpoint import load_embedder
from prodsearch.retrieval.embedder import Embedder, build_embedder


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
) -> Embedder:
    """An embedder by model name (see :func:`~prodsearch.retrieval.embedder.build_embedder` for the
    options), or the trained one a checkpoint file holds."""
    if is_checkpoint_path(name):
        return load_embedder(name)
    return build_embedder(os.fspath(name), pretrained=pretrained, embed_dim=embed_dim, img_size=img_size,
                          crop_pct=crop_pct)

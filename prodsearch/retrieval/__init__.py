"""The embedder: timm backbone, offline ImageNet weights, preprocessing, runtimes and batch embedding.

Names are imported on first use (PEP 562), so ``import prodsearch.retrieval.config`` and the ONNX
runtime's path never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "DEFAULT_MODEL": "prodsearch.choices", "MODELS": "prodsearch.choices",
    "Embedder": "prodsearch.retrieval.embedder", "EmbedderConfig": "prodsearch.retrieval.config",
    "adapt_batchnorm": "prodsearch.retrieval.adabn",
    "EnsembleEmbedder": "prodsearch.retrieval.ensemble",
    "create_embedder": "prodsearch.retrieval.factory", "create_encoder": "prodsearch.retrieval.encoders",
    "FileEmbeddings": "prodsearch.retrieval.embedding", "embed_files": "prodsearch.retrieval.embedding",
    "embed_pil": "prodsearch.retrieval.embedding",
    "ImageLoadError": "prodsearch.retrieval.images", "load_image": "prodsearch.retrieval.images",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)

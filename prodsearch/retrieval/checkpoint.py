"""Checkpoints of trained embedders: plain tensors and numbers, loaded with ``weights_only=True``.

A checkpoint holds the embedder's architecture, preprocessing and weights, the SKU classes it was
trained on, and (for ``--resume``) the losses', optimizer's and scheduler's state. Its identity in an
index manifest is a digest of the embedder weights, so the same weights always match, wherever the
file lives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import timm
import torch

from prodsearch.choices import DEFAULT_POOLING
from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.embedder import Embedder, EmbedderConfig
from prodsearch.retrieval.pooling import check_pooling

log = logging.getLogger(__name__)

FORMAT = "prodsearch-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ProdsearchError):
    """A checkpoint file that is missing, damaged, or not a prodsearch checkpoint."""


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the weights (names and values), independent of the file they are stored in."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, embedder: Embedder, **extra: Any) -> Path:
    """Write ``embedder`` (and ``extra`` state: classes, optimizer, ...) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = embedder.config
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embedder": {"name": config.name, "embed_dim": config.embed_dim, "head": config.head,
                     "data_config": dict(config.data_config), "base_weights": config.weights,
                     "pooling": config.pooling},
        "state_dict": {k: v.detach().cpu() for k, v in embedder.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with: prodsearch train TRAIN --out DIR")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable prodsearch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a prodsearch checkpoint")
    return payload


def build_from_checkpoint(payload: dict[str, Any], source: str | None = None) -> Embedder:
    """An embedder with the architecture and weights a checkpoint payload describes."""
    spec = payload["embedder"]
    backbone = timm.create_model(spec["name"], pretrained=False, num_classes=0)
    state = payload["state_dict"]
    config = EmbedderConfig(spec["name"], f"checkpoint:{weights_digest(state)}", int(spec["embed_dim"]),
                            dict(spec["data_config"]), head=bool(spec["head"]), source=source,
                            pooling=check_pooling(spec.get("pooling", DEFAULT_POOLING)))
    embedder = Embedder(backbone, config)
    embedder.load_state_dict(state, strict=True)
    return embedder.eval()


def load_embedder(path: str | os.PathLike) -> Embedder:
    """The trained embedder stored in a checkpoint file."""
    embedder = build_from_checkpoint(load_checkpoint(path), source=str(Path(path).resolve()))
    log.info("loaded embedder %s (%s) from %s", embedder.config.name, embedder.config.weights, path)
    return embedder

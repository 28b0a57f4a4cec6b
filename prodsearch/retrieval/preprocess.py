"""Preprocessing from the model's data config, so index and query can only ever agree."""

from __future__ import annotations

import math
from typing import Any, Callable

import timm.data
import torch
from PIL import Image


def build_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize, centre-crop, normalise: timm's eval transform for this config."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    return timm.data.create_transform(**config, is_training=False)


def decode_min_side(data_config: dict[str, Any]) -> int:
    """The short side the resize step needs; JPEG decoding may downscale to it for free."""
    size = int(data_config["input_size"][-1])
    return math.ceil(size / float(data_config.get("crop_pct", 1.0)))

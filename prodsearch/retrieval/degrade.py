"""Small, blurry photos: what a far shelf photo or a frame cropped from in-store video gives.

One shop's queries were crops of in-store video, about 107 x 128 px, blurry and JPEG-compressed,
and every lever chosen on Grocery Store's 348 px phone photos lost there (issue 28). This is that
condition made from any photo: the short side reduced to 96-128 px, a mild Gaussian blur, JPEG
quality 50-70. The same function makes the benchmark's small-query condition, the held-out photos
``train`` compares its model on when it has no validation photos, and the ``degrade`` training
augmentation, so the three see one condition.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SHORT_SIDE = (96, 128)  # pixels, inclusive
BLUR_RADIUS = (0.3, 1.0)  # Gaussian blur, pixels of the reduced photo
JPEG_QUALITY = (50, 70)  # inclusive


def degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` as a small, blurry JPEG would show it (RGB, short side 96-128 px). A photo already
    smaller than the side drawn is not enlarged."""
    return Image.open(io.BytesIO(degraded_jpeg(img, rng))).convert("RGB")


def degraded_jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    """The JPEG file of :func:`degrade`'s photo."""
    img = img.convert("RGB")
    side = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    scale = side / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*BLUR_RADIUS))))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return buffer.getvalue()


class Degrade:
    """:func:`degrade` as a training augmentation (PIL in, PIL out, for torchvision's ``Compose``);
    its randomness comes from Python's ``random``, which DataLoader seeds in each worker."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return degrade(img, np.random.default_rng(random.getrandbits(64)))


def degraded_copy(source: str | os.PathLike, target: str | os.PathLike, seed: int) -> Path:
    """Write ``source`` degraded to ``target`` (JPEG), the same bytes for the same ``seed``; an
    existing ``target`` is kept (a benchmark re-run reuses its photos)."""
    from prodsearch.retrieval.images import load_image

    target = Path(target)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(degraded_jpeg(load_image(source), np.random.default_rng(seed)))
        os.replace(tmp, target)
    return target

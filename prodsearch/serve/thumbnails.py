"""Catalog photos for web pages: the original file, or a thumbnail kept in ``thumbnails/`` inside
the index folder (``<md5>-<size>.jpg``: an image's content never changes under its id, so neither
does its thumbnail). Sizes are rounded up to a few steps, so a client cannot fill the disk with
one thumbnail per pixel size. A read-only index folder serves thumbnails without keeping them."""

from __future__ import annotations

import io
import logging
from bisect import bisect_left
from pathlib import Path

from PIL import Image

from prodsearch.catalog.files import write_atomically
from prodsearch.retrieval.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

THUMBNAILS = "thumbnails"
SIZES = (64, 96, 128, 160, 256, 320, 480, 640, 1024)


def thumbnail_size(asked: int) -> int:
    """The step at or above ``asked`` (the largest step for anything bigger)."""
    return SIZES[min(bisect_left(SIZES, asked), len(SIZES) - 1)]


def thumbnail(index_dir: Path, image_path: str, md5: str, size: int) -> bytes:
    """A JPEG of the photo at ``image_path`` whose longest side is at most ``size`` (a step of
    :data:`SIZES`); made once and kept. Raises :class:`ImageLoadError` if the photo cannot be read."""
    cached = index_dir / THUMBNAILS / f"{md5}-{size}.jpg"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    img = load_image(image_path, min_side=size)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85, optimize=True)
    data = out.getvalue()
    try:
        cached.parent.mkdir(exist_ok=True)
        write_atomically(cached, data)
    except OSError as exc:
        log.debug("not keeping the thumbnail %s: %s", cached, exc)
    return data


__all__ = ["ImageLoadError", "SIZES", "THUMBNAILS", "thumbnail", "thumbnail_size"]  # ImageLoadError: what thumbnail() raises

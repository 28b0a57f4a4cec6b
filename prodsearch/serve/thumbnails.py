"""Catalog photos for web pages: the original file, or a thumbnail kept in ``thumbnails/`` inside
the index folder (``<md5>-<size>.jpg``: an image's content never changes under its id, so neither
does its thumbnail). Sizes are rounded up to a few steps, so a client cannot fill the disk with
one thumbnail per pixel size. A read-only index folder serves thumbnails without keeping them.

A file is served only while it is the file that was indexed (its size, then its MD5, checked on
the bytes sent): whatever the path points to now (a symlink to ``/etc/passwd``, a FIFO, a newer
photo) is never sent under the old image's id and ETag."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from bisect import bisect_left
from pathlib import Path

from PIL import Image

from prodsearch.catalog.files import write_atomically
from prodsearch.retrieval.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

THUMBNAILS = "thumbnails"
SIZES = (64, 96, 128, 160, 256, 320, 480, 640, 1024)


class ChangedFileError(Exception):
    """The file at an image's path is not the file that was indexed; says how."""


def thumbnail_size(asked: int) -> int:
    """The step at or above ``asked`` (the largest step for anything bigger)."""
    return SIZES[min(bisect_left(SIZES, asked), len(SIZES) - 1)]


def indexed_bytes(path: str, md5: str, nbytes: int | None) -> bytes:
    """The bytes of the file at ``path`` if they are those indexed (``nbytes`` long, with MD5
    ``md5``); else :class:`ChangedFileError`. The file is opened once (never blocking: a FIFO) and
    checked on what was read, so a swap between check and read cannot slip through."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ChangedFileError("is gone") from None
    except OSError as exc:
        raise ChangedFileError(f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        _check_stat(os.fstat(f.fileno()), nbytes)
        try:
            data = f.read(nbytes + 1 if nbytes is not None else -1)
        except OSError as exc:
            raise ChangedFileError(f"cannot be read ({exc.strerror})") from None
    if hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
        raise ChangedFileError("changed (its content)")
    return data


def still_there(path: str, nbytes: int | None) -> None:
    """A cheap check (no read) that the file at ``path`` may still be the one indexed; else
    :class:`ChangedFileError`."""
    try:
        _check_stat(os.stat(path), nbytes)
    except FileNotFoundError:
        raise ChangedFileError("is gone") from None
    except OSError as exc:
        raise ChangedFileError(f"cannot be opened ({exc.strerror})") from None


def _check_stat(st: os.stat_result, nbytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ChangedFileError("is no longer a regular file")
    if nbytes is not None and st.st_size != nbytes:
        raise ChangedFileError("changed (its size)")


def thumbnail(index_dir: Path, image_path: str, md5: str, nbytes: int | None, size: int) -> bytes:
    """A JPEG of the photo at ``image_path`` (``nbytes`` long, MD5 ``md5``) whose longest side is at
    most ``size`` (a step of :data:`SIZES`); made once and kept. Raises :class:`ChangedFileError`
    if the file is not the one indexed, :class:`ImageLoadError` if it cannot be decoded."""
    still_there(image_path, nbytes)  # a cached thumbnail is of the indexed photo, but the photo must be there
    cached = index_dir / THUMBNAILS / f"{md5}-{size}.jpg"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    img = load_image(io.BytesIO(indexed_bytes(image_path, md5, nbytes)), min_side=size)
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


# ImageLoadError: what thumbnail() raises for a photo that does not decode
__all__ = ["SIZES", "THUMBNAILS", "ChangedFileError", "ImageLoadError", "indexed_bytes", "thumbnail", "thumbnail_size"]

"""Photos that arrive over HTTP: size limits, decoding into model inputs, and the reasons a photo
is refused. Nothing here touches the filesystem."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import functools
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from prodsearch.catalog.files import IMAGE_EXTENSIONS
from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.embedding import Decoder

MAX_PHOTOS = 8  # per search: several photos of one product
# Pixels the photos of one request may decode to (a JPEG counts as its downscaled draft, about the
# model's size): 8 phone photos take under 2 million, one 50-megapixel PNG all of it. Beyond, 413:
# decoded they would hold 3 bytes a pixel, several times over under concurrent requests.
MAX_REQUEST_PIXELS = 50_000_000
TRIM_AFTER_PIXELS = 4_000_000  # a request that decoded more gives the freed memory back to the system
# What Pillow calls a format, as the file extension an uploaded photo is stored under.
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tif"}
assert set(EXTENSIONS.values()) <= IMAGE_EXTENSIONS


class BadPhotoError(ProdsearchError):
    """A photo that cannot be used (not an image, truncated, too many pixels): HTTP 422."""


class TooLargeError(ProdsearchError):
    """An upload over the size limit: HTTP 413."""


def check_size(data: bytes, limit_bytes: int, label: str) -> None:
    if len(data) > limit_bytes:
        raise TooLargeError(f"{label} is {len(data) / 2**20:.1f} MB, more than the {limit_bytes / 2**20:.3g} MB "
                            "a photo may have (the server's --max-upload-mb)")


def from_base64(texts: list[str], limit_bytes: int) -> list[bytes]:
    """The photos of a JSON request (data URLs such as ``data:image/jpeg;base64,...`` too)."""
    photos = []
    for i, text in enumerate(texts, 1):
        if len(text) * 3 // 4 > limit_bytes + 3:  # before decoding it
            raise TooLargeError(f"photo {i} is over the {limit_bytes / 2**20:.3g} MB a photo may have")
        try:
            photos.append(base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text,
                                           validate=True))
        except (binascii.Error, ValueError):
            raise BadPhotoError(f"photo {i} is not valid base64") from None
    return photos


def extension(data: bytes) -> str:
    """The extension to store a photo under, from its content (never from a client's file name)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadPhotoError("not an image (unrecognised format)") from None
    if fmt not in EXTENSIONS:
        raise BadPhotoError(f"{fmt} photos are not accepted; send JPEG, PNG, WebP, GIF, BMP or TIFF")
    return EXTENSIONS[fmt]


class PhotoDecoder:
    """Decodes and preprocesses the photos of a request into the model inputs of their ``views``
    (the index's setting); several photos decode in parallel on a small thread pool (PIL and numpy
    release the GIL)."""

    def __init__(self, data_config: dict, threads: int, max_bytes: int, views: int = 1,
                 max_pixels: int = MAX_REQUEST_PIXELS):
        self._decode, self.max_bytes, self.views = Decoder(data_config, views), max_bytes, views
        self.max_pixels = max_pixels
        self._budget = PixelBudget(2 * max_pixels)  # server-wide: concurrent requests of large photos take turns
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="prodsearch-decode")

    def inputs(self, photos: list[bytes]) -> np.ndarray:
        """The model inputs of ``photos``, ``(n * views, 3, H, W)``, each photo's views consecutive;
        the first photo over ``max_bytes`` or that does not decode is refused with why. One photo is
        decoded in the calling thread: a hand-off to the pool would only add latency."""
        for i, data in enumerate(photos, 1):
            check_size(data, self.max_bytes, f"photo {i}")
        pixels = sum(self._decode.pixels(io.BytesIO(data)) for data in photos)  # headers only
        if pixels > self.max_pixels:
            raise TooLargeError(f"the {'photos' if len(photos) > 1 else 'photo'} would decode to "
                                f"{pixels / 1e6:.0f} megapixels, more than the {self.max_pixels / 1e6:.0f} a "
                                "request may have; send smaller photos (the model sees a few hundred pixels a side)")
        decode = lambda data: self._decode(io.BytesIO(data))  # noqa: E731
        try:
            with self._budget.held(pixels):
                decoded = [decode(photos[0])] if len(photos) == 1 else list(self._pool.map(decode, photos))
        finally:
            if pixels > TRIM_AFTER_PIXELS:
                give_back_memory()
        for i, (array, _, reason) in enumerate(decoded, 1):
            if array is None:
                raise BadPhotoError(f"photo {i} cannot be used: {reason}" if len(photos) > 1
                                    else f"the photo cannot be used: {reason}")
        return np.concatenate([array for array, _, _ in decoded])

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class PixelBudget:
    """Pixels decoded at once across all requests: a request that would go over waits for others
    to finish decoding, so concurrency cannot multiply the memory one request may take."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        with self._changed:  # alone, any request fits (it is checked against a smaller limit first)
            self._changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()


def give_back_memory() -> None:
    """Return the freed heap to the system. Pillow decodes in blocks below glibc's mmap threshold,
    so a large photo's memory stays in malloc's arenas once freed, and the RSS stays high for good
    (870 MB after four 8-photo requests); ``malloc_trim`` releases it. A no-op beyond glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None

"""Photos that arrive over HTTP: size limits, decoding into model inputs, and the reasons a photo
is refused. Nothing here touches the filesystem."""

from __future__ import annotations

import base64
import binascii
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from prodsearch.catalog.files import IMAGE_EXTENSIONS
from prodsearch.errors import ProdsearchError
from prodsearch.retrieval.embedding import Decoder

MAX_PHOTOS = 8  # per search: several photos of one product
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

    def __init__(self, data_config: dict, threads: int, max_bytes: int, views: int = 1):
        self._decode, self.max_bytes, self.views = Decoder(data_config, views), max_bytes, views
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="prodsearch-decode")

    def inputs(self, photos: list[bytes]) -> np.ndarray:
        """The model inputs of ``photos``, ``(n * views, 3, H, W)``, each photo's views consecutive;
        the first photo over ``max_bytes`` or that does not decode is refused with why. One photo is
        decoded in the calling thread: a hand-off to the pool would only add latency."""
        for i, data in enumerate(photos, 1):
            check_size(data, self.max_bytes, f"photo {i}")
        decode = lambda data: self._decode(io.BytesIO(data))  # noqa: E731
        decoded = [decode(photos[0])] if len(photos) == 1 else list(self._pool.map(decode, photos))
        for i, (array, _, reason) in enumerate(decoded, 1):
            if array is None:
                raise BadPhotoError(f"photo {i} cannot be used: {reason}" if len(photos) > 1
                                    else f"the photo cannot be used: {reason}")
        return np.concatenate([array for array, _, _ in decoded])

    def close(self) -> None:
        self._pool.shutdown(wait=True)



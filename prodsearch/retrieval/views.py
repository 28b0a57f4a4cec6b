"""Fixed views of one photo (the whole photo, then centre and corner crops) for test-time
augmentation and multi-view catalogs: deterministic, so an index built twice holds the same vectors.

An index built with ``views`` > 1 embeds every photo, catalog and query alike, as the mean of its
views' embeddings (:func:`view_inputs` before the model, :func:`fuse_views` after it): still one
vector per photo, the model run ``views`` times. On Grocery Store (iconic catalog, shelf photos,
ImageNet lite0) 6 views on both sides lift top-1 from 0.385 to 0.476.

A crop of a small photo (a 107 x 128 px video crop: its crops are 75 x 90 px) is enlarged to the
model's input, blurring what was already blurred. ``upsample_crops=False`` never does that: where a
crop would be smaller than the model's input, every view is the whole photo instead (still ``n``
views, so fusing and the count of model inputs are unchanged). The default keeps the crops, so
existing indexes keep their vectors.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from PIL import Image

from prodsearch.retrieval.preprocess import Preprocess

CROP = 0.7  # side of a crop, as a fraction of the photo's
# (x, y) of a crop's top-left corner, as a fraction of the room left around it.
PLACES = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
MAX_VIEWS = 1 + len(PLACES)  # prodsearch.choices keeps a light copy for the CLI


def check_views(n: int) -> None:
    """Refuse a number of views there are no crops for (the index manifest and CLI check it too)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_VIEWS:
        raise ValueError(f"views must be a whole number from 1 to {MAX_VIEWS}, not {n!r}")


def crop_views(img: Image.Image, n: int, min_crop: tuple[int, int] | None = None) -> list[Image.Image]:
    """The first ``n`` views of ``img``: itself, the centre crop, then the four corner crops.
    ``img`` must be upright (:func:`~prodsearch.retrieval.images.load_image` turns it so): a corner
    crop of a sideways photo would be another corner of the product. With ``min_crop`` (width,
    height), a photo whose crops would be narrower or lower than that is all ``n`` of its views."""
    check_views(n)
    if min_crop is not None and n > 1 and crops_smaller(img.size, min_crop):
        return [img] * n
    w, h = img.size
    cw, ch = round(w * CROP), round(h * CROP)
    views = [img]
    for fx, fy in PLACES[: n - 1]:
        x, y = round((w - cw) * fx), round((h - ch) * fy)
        views.append(img.crop((x, y, x + cw, y + ch)))
    return views


def view_inputs(img: Image.Image, n: int, preprocess: Preprocess, upsample_crops: bool = True) -> np.ndarray:
    """The model inputs of the first ``n`` views of the upright RGB ``img``, ``(n, 3, H, W)``
    float32; with ``n == 1`` exactly the photo's own input. ``upsample_crops=False``: where a crop
    would be smaller than the model's input (and enlarged), each view is the whole photo."""
    min_crop = None if upsample_crops else (preprocess.width, preprocess.height)
    return np.stack([preprocess(view) for view in crop_views(img, n, min_crop)])


def crops_smaller(size: tuple[int, int], min_crop: tuple[int, int]) -> bool:
    """Whether the crops of a photo of ``size`` (width, height) are narrower or lower than
    ``min_crop``: the model's input, which the resize would enlarge them to."""
    return round(size[0] * CROP) < min_crop[0] or round(size[1] * CROP) < min_crop[1]


def fuse_views(vectors: np.ndarray, n: int) -> np.ndarray:
    """One vector per photo from the embeddings of its ``n`` views (consecutive rows of
    ``vectors``): the mean of the L2-normalised rows, normalised again. ``n == 1`` returns
    ``vectors`` as they are, so a one-view index holds exactly what it held before views existed."""
    check_views(n)
    if n == 1:
        return vectors
    if len(vectors) % n:
        raise ValueError(f"{len(vectors)} embeddings are not whole groups of {n} views")
    grouped = vectors.reshape(len(vectors) // n, n, -1).astype(np.float32, copy=False)
    mean = normalized(grouped).mean(axis=1)
    return normalized(mean)


def decode_side(min_side: int, n: int) -> int:
    """The short side a photo must keep when the JPEG decoder downscales it: with crops, enough that
    a crop (``CROP`` of the photo) still reaches the model's resize target without upscaling."""
    return min_side if n == 1 else math.ceil(min_side / CROP)


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero): what fusing views and re-ranking work on."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)

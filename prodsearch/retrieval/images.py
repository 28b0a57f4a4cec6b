"""Reading photos the way a phone or a shop system writes them: any mode, any orientation."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow warns about images above Image.MAX_IMAGE_PIXELS (and refuses those above twice that);
# :func:`check_pixel_count` refuses them all, explicitly. The filter is set once, here: a
# per-call ``warnings.catch_warnings`` would change the process-wide filters under other threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageLoadError(Exception):
    """A file that cannot be used as a photo; the message is the reason shown to the user."""


def check_pixel_count(size: tuple[int, int]) -> None:
    """A decompression bomb is an attack or a broken file, never a product photo."""
    width, height = size
    limit = Image.MAX_IMAGE_PIXELS  # Pillow's setting, so a program that raises it raises ours too
    if limit and width * height > limit:
        raise ImageLoadError(f"image too large: {width} x {height} = {width * height} pixels, more than the "
                             f"{limit} a photo may have")


def load_image(path: str | os.PathLike | io.BytesIO, min_side: int | None = None) -> Image.Image:
    """Open ``path`` (a file, or the bytes of an upload) as an upright RGB image.

    ``min_side`` lets the JPEG decoder downscale by a power of two while keeping the short side
    at least that long: a 12-megapixel phone photo then decodes several times faster.
    """
    try:
        with Image.open(path) as img:
            check_pixel_count(img.size)
            _draft(img, min_side)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # not a copy: a 9400 x 9400 PNG is 265 MB once already
            return to_rgb(img)
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except IsADirectoryError:
        raise ImageLoadError("is a directory") from None
    except UnidentifiedImageError:
        size = path.getbuffer().nbytes if isinstance(path, io.BytesIO) else os.path.getsize(path)
        raise ImageLoadError("empty file" if size == 0 else "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from None


def decoded_pixels(path: str | os.PathLike | io.BytesIO, min_side: int | None = None) -> int:
    """How many pixels :func:`load_image` decodes ``path`` to, from its header alone (a JPEG's
    downscaled draft counts as its draft); 0 for a file that does not open or that no photo can be
    (a decompression bomb): loading it says why."""
    try:
        with Image.open(path) as img:
            check_pixel_count(img.size)
            width, height = _draft(img, min_side).size
            return width * height
    except (ImageLoadError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0
    finally:
        if isinstance(path, io.BytesIO):
            path.seek(0)


def _draft(img: Image.Image, min_side: int | None) -> Image.Image:
    if min_side and img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is flattened onto white like a shop photo."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit, 32-bit or float pixels to 0..255 (Pillow's own convert would clip them)."""
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float64)
    peak = array.max(initial=0)
    if is_float and peak <= 1.0:
        top = 1.0
    else:
        top = 65535.0 if peak > 255 else 255.0
    return np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)

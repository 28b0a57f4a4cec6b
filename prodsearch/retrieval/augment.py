"""Customer-photo augmentation: a catalog photo made to look like a phone photo on a shelf.

Random crops, flips and colour jitter teach little about what a customer's snapshot looks like.
:class:`CustomerPhoto` renders one instead: a product on a plain background is cut out and placed
on shelf clutter, tilted, rotated, scaled, sometimes partly covered by a hand or a price tag,
relit and made noisy (the scene the demo's snapshots use, :func:`prodsearch.synthetic.snapshot.snapshot_of`);
a photo without a plain background (a customer photo already) is only tilted. Then the camera:
low resolution (downscale-upscale), motion blur and JPEG artefacts. Horizontal flips are off by
default: mirrored text never appears on a real package.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageFilter

from prodsearch.synthetic.snapshot import snapshot_of, warp

PLAIN_SPREAD = 12.0  # max std of the border pixels (0-255) for a background to count as plain
CUT_DISTANCE = 40.0  # colour distance from the background at which a pixel is fully product


def plain_background(img: Image.Image, border: int = 4) -> tuple[int, int, int] | None:
    """The colour of a plain (studio) background, or ``None``: the outermost pixels must all be
    close to one colour."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    edge = np.concatenate([a[:border].reshape(-1, 3), a[-border:].reshape(-1, 3),
                           a[:, :border].reshape(-1, 3), a[:, -border:].reshape(-1, 3)])
    if edge.std(axis=0).max() > PLAIN_SPREAD:
        return None
    return tuple(int(round(v)) for v in edge.mean(axis=0))


def cut_out(img: Image.Image) -> Image.Image | None:
    """The product of a plain-background photo as RGBA, transparent around it and cropped to it;
    ``None`` without a plain background or when nothing stands out from it."""
    colour = plain_background(img)
    if colour is None:
        return None
    rgb = img.convert("RGB")
    distance = np.linalg.norm(np.asarray(rgb, dtype=np.float32) - np.array(colour, dtype=np.float32), axis=2)
    alpha = Image.fromarray(np.clip(distance * (255 / CUT_DISTANCE), 0, 255).astype(np.uint8))
    alpha = alpha.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1))
    box = alpha.point(lambda v: 255 if v > 64 else 0).getbbox()
    if box is None:
        return None
    product = rgb.copy()
    product.putalpha(alpha)
    return product.crop(box)


class CustomerPhoto:
    """PIL image in, a customer-photo-like PIL image out (``size`` x ``size``); a callable for
    torchvision's ``Compose``. Randomness comes from Python's ``random`` (which DataLoader seeds
    in each worker), so a seeded run is reproducible."""

    def __init__(self, size: int = 256, flip: bool = False):
        self.size, self.flip = size, flip

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = np.random.default_rng(random.getrandbits(64))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        product = cut_out(img)
        if product is not None:
            scale = self.size / max(product.size)
            product = product.resize((max(1, round(product.width * scale)), max(1, round(product.height * scale))),
                                     Image.BILINEAR)
            out = snapshot_of(product, rng, self.size)
        else:
            out = _tilted(img.convert("RGB"), rng, self.size)
        return camera(out, rng)


def _tilted(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A photo that has its own surroundings: perspective and rotation only, filled by its edges."""
    img = img.resize((size, size), Image.BILINEAR)
    tilted = warp(img.convert("RGBA"), rng).resize((size, size), Image.BILINEAR)
    canvas = img.filter(ImageFilter.GaussianBlur(size / 32))
    canvas.paste(tilted, (0, 0), tilted)
    return canvas


def camera(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a cheap phone camera does: lower resolution, a shaky hand, JPEG compression."""
    w, h = img.size
    if rng.random() < 0.5:  # low resolution
        f = rng.uniform(0.25, 0.8)
        img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.3:  # motion blur: the mean of shifted copies along one direction
        length, angle = rng.uniform(2, 0.04 * w + 2), rng.uniform(0, math.pi)
        a = np.asarray(img, dtype=np.float32)
        steps = max(2, int(length))
        shifts = [(round(t * math.sin(angle)), round(t * math.cos(angle)))
                  for t in np.linspace(-length / 2, length / 2, steps)]
        a = np.mean([np.roll(a, s, axis=(0, 1)) for s in shifts], axis=0)
        img = Image.fromarray(a.astype(np.uint8))
    if rng.random() < 0.6:  # JPEG artefacts
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=int(rng.integers(20, 90)))
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return img

"""Customer snapshots of the synthetic shop: the product as a phone sees it on a shelf."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from prodsearch.synthetic.render import _fit_text, _font, _product_rgba, _scaled
from prodsearch.synthetic.specs import RGB, WHITE, ProductSpec, _hsv, _shade


_LETTERS = np.array(list("ABCDEFGHIKLMNOPRSTUVWXYZ"))
_SKIN = ((236, 188, 150), (224, 172, 130), (198, 134, 96), (141, 85, 60), (250, 210, 180))


def _rand_color(rng: np.random.Generator, sat: tuple = (0.1, 0.5), val: tuple = (0.35, 0.85)) -> RGB:
    return _hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def _draw_shelves(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """Shelf boards stocked with other (anonymous) packages."""
    prev = -size * 0.1
    for sy in np.sort(rng.uniform(0.15, 1.0, int(rng.integers(2, 4)))) * size:
        x = -rng.uniform(0, size * 0.2)
        while x < size and sy - prev > 0.05 * size:
            pw, ph = rng.uniform(0.08, 0.25) * size, rng.uniform(0.5, 0.95) * (sy - prev)
            c = _rand_color(rng)
            d.rectangle((x, sy - ph, x + pw, sy), fill=c, outline=_shade(c, 0.6))
            stripe = (x, sy - ph * rng.uniform(0.3, 0.7), x + pw, sy - ph * rng.uniform(0.1, 0.3))
            d.rectangle(stripe, fill=_rand_color(rng))
            if rng.random() < 0.5:
                d.text((x + 2, sy - ph * 0.9), "".join(rng.choice(_LETTERS, int(rng.integers(3, 7)))),
                       font=_font(size * rng.uniform(0.04, 0.08)), fill=_rand_color(rng))
            x += pw + rng.uniform(0, 0.04) * size
        board = _rand_color(rng, (0.0, 0.3), (0.5, 0.95))
        d.rectangle((0, sy, size, sy + 0.05 * size), fill=board)
        d.line((0, sy + 0.05 * size, size, sy + 0.05 * size), fill=_shade(board, 0.5), width=max(1, size // 100))
        prev = sy + 0.05 * size


def _draw_counter(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A wood-grain or tiled counter with a few objects lying around."""
    base = _rand_color(rng, (0.1, 0.5), (0.4, 0.9))
    if rng.random() < 0.5:
        for y in np.arange(0, size, rng.uniform(0.02, 0.06) * size):
            d.line((0, y, size, y + rng.uniform(-8, 8)), fill=_shade(base, rng.uniform(0.75, 1.2)), width=2)
    else:
        for x in np.arange(0, size, rng.uniform(0.12, 0.3) * size):
            d.line((x, 0, x, size), fill=_shade(base, 0.7), width=2)
            d.line((0, x, size, x), fill=_shade(base, 0.7), width=2)
    for _ in range(int(rng.integers(3, 8))):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.05, 0.2) * size
        draw = d.ellipse if rng.random() < 0.5 else d.rectangle
        draw((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=_rand_color(rng))


def _clutter_background(rng: np.random.Generator, size: int) -> Image.Image:
    """Busy but out-of-focus surroundings: a stocked shelf (70 %) or a counter top."""
    img = Image.new("RGB", (size, size), _rand_color(rng, (0.05, 0.4), (0.35, 0.85)))
    (_draw_shelves if rng.random() < 0.7 else _draw_counter)(ImageDraw.Draw(img), rng, size)
    img = img.filter(ImageFilter.BoxBlur(rng.uniform(2.5, 5) * size / 256))
    mean = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0))
    return Image.blend(img, Image.new("RGB", img.size, mean), rng.uniform(0.3, 0.6))  # depth-of-field haze


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` back to input points ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def warp(prod: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Perspective tilt (corners jittered) and in-plane rotation (clipped to +-25 deg) in one resampling."""
    w, h = prod.size
    src = np.array([(0, 0), (w, 0), (w, h), (0, h)], float)
    dst = src + rng.uniform(-0.06, 0.06, (4, 2)) * (w, h)
    a = math.radians(float(np.clip(rng.normal(0, 8), -25, 25)))
    dst = (dst - (w / 2, h / 2)) @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    dst -= dst.min(axis=0)
    size = tuple(int(v) + 1 for v in dst.max(axis=0))
    out = prod.transform(size, Image.PERSPECTIVE, _perspective_coeffs(dst, src), Image.BILINEAR)
    return out.crop(out.getchannel("A").getbbox())


def _occluder(rng: np.random.Generator, bw: float, bh: float) -> Image.Image:
    """A hand, a price tag or another package, sized to cover roughly 5-25 % of the product."""
    n = int(2 * math.sqrt(rng.uniform(0.06, 0.25) * bw * bh)) + 4
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    kind = rng.choice(["hand", "tag", "box"], p=[0.4, 0.35, 0.25])
    if kind == "hand":
        skin = _SKIN[rng.integers(len(_SKIN))]
        d.ellipse((n * .3, n * .45, n * .95, n * 1.1), fill=skin)
        for i in range(4):
            fx = n * (.3 + .15 * i)
            d.rounded_rectangle((fx, n * (.05 + .06 * abs(i - 1.5)), fx + n * .12, n * .65), radius=n * .06,
                                fill=_shade(skin, 0.95 + 0.03 * i))
        d.rounded_rectangle((n * .05, n * .4, n * .45, n * .55), radius=n * .07, fill=_shade(skin, 0.9))  # thumb
        img = img.resize((n, int(n * 0.8)))
    elif kind == "tag":
        c = ((255, 240, 60), WHITE, (255, 120, 120))[rng.integers(3)]
        d.rectangle((0, n * .3, n * .95, n * .75), fill=c, outline=(40, 40, 40), width=max(1, n // 40))
        d.rectangle((0, n * .3, n * .95, n * .38), fill=(200, 20, 30))
        price = f"{rng.integers(1, 20)}.{rng.integers(0, 99):02d}"
        _fit_text(d, (n * .47, n * .57), price, n * .8, n * .25, (10, 10, 10))
    else:
        d.rectangle((0, n * .2, n * .9, n * .8), fill=_rand_color(rng))
        d.rectangle((0, n * .45, n * .9, n * .55), fill=_rand_color(rng))
    img = img.rotate(rng.uniform(0, 360), Image.BILINEAR, expand=True)
    return img.crop(img.getchannel("A").getbbox())


def _lighting_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Contrast/brightness, a colour cast, a light gradient, then sensor noise (mostly luma)."""
    a = np.asarray(img).astype(np.float32)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.85, 1.1) + mean * rng.uniform(0.85, 1.12)
    a *= rng.uniform(0.95, 1.05, 3)[None, None, :]
    ang, g = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.3)
    xx, yy = np.arange(img.width) / img.width - .5, np.arange(img.height) / img.height - .5
    a *= (1 + g * (np.cos(ang) * xx[None, :] + np.sin(ang) * yy[:, None]))[..., None].astype(np.float32)
    a += rng.standard_normal((img.height, img.width, 1), dtype=np.float32) * rng.uniform(1, 4)
    a += rng.standard_normal(a.shape, dtype=np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def render_snapshot(spec: ProductSpec, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A customer's phone photo of ``spec``: scaled, tilted and rotated on clutter, often partly
    occluded, relit, blurred and noisy - hard, yet recognisable."""
    return snapshot_of(_product_rgba(spec, size), rng, size)


def snapshot_of(product: Image.Image, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A customer's phone photo of a cut-out product (RGBA, transparent around it): the same
    scene as :func:`render_snapshot`, for any product image (training augmentation of real ones)."""
    img = _clutter_background(rng, size)
    prod = product
    prod = warp(_scaled(prod, rng.uniform(0.65, 0.92) * size / max(prod.size)), rng)
    if max(prod.size) > size:
        prod = _scaled(prod, size / max(prod.size))
    pw, ph = prod.size
    x, y = int(rng.uniform(0, size - pw)), int(rng.uniform(0, size - ph))
    shadow = prod.getchannel("A").point(lambda v: v * 0.45).filter(ImageFilter.BoxBlur(size / 50))
    img.paste((0, 0, 0), (x + int(size * .03), y + int(size * .03)), shadow)
    img.paste(prod, (x, y), prod)
    if rng.random() < 0.5:
        occ = _occluder(rng, pw, ph)
        ox = x + int(rng.uniform(-0.3, 0.9) * pw) if rng.random() < 0.5 else x + int(rng.choice([-0.4, 0.75]) * pw)
        img.paste(occ, (ox, y + int(rng.uniform(-0.2, 0.85) * ph)), occ)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0) * size / 256))
    return _lighting_noise(img, rng)

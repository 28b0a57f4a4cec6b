"""Catalog photos of the synthetic shop: clean renders of the packaging on near-white."""

from __future__ import annotations

import itertools
import math
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from prodsearch.synthetic.specs import RGB, WHITE, ProductSpec, _shade


def _font(px: float) -> ImageFont.FreeTypeFont:
    return _font_px(max(6, int(px)))


@lru_cache(maxsize=256)
def _font_px(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow's bundled FreeType font: works offline


def _fit_text(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, max_w: float,
              max_h: float, fill: RGB, bold: bool = True) -> None:
    """Centred text as large as fits in max_w x max_h (bold via a same-colour stroke)."""
    px = max(6, int(max_h))
    width = _font(px).getlength(text) * (1.08 if bold else 1.0)
    px = max(6, int(px * max_w / width)) if width > max_w else px
    sw = max(1, px // 14) if bold else 0
    d.text(xy, text, font=_font(px), fill=fill, anchor="mm", stroke_width=sw, stroke_fill=fill)


def _bb(cx: float, cy: float, rx: float, ry: float | None = None) -> tuple:
    return (cx - rx, cy - (rx if ry is None else ry), cx + rx, cy + (rx if ry is None else ry))


def _star(cx: float, cy: float, r: float, n: int = 5, inner: float = 0.45) -> list:
    return [(cx + r * (1 if i % 2 == 0 else inner) * math.sin(math.pi * i / n),
             cy - r * (1 if i % 2 == 0 else inner) * math.cos(math.pi * i / n)) for i in range(2 * n)]


def _leaf(cx: float, cy: float, r: float, angle: float = -0.7) -> list:
    t = np.linspace(0, math.pi, 12)
    x = np.concatenate([-r + 2 * r * t / math.pi, r - 2 * r * t / math.pi])
    y = np.concatenate([-0.45 * r * np.sin(t), 0.45 * r * np.sin(t)])
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + xi * ca - yi * sa, cy + xi * sa + yi * ca) for xi, yi in zip(x, y)]


def _draw_logo(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, c: RGB) -> None:
    w = max(1, int(r / 5))
    if kind == "circle":
        d.ellipse(_bb(cx, cy, r), fill=c)
        d.ellipse(_bb(cx, cy, .55 * r), outline=WHITE, width=w)
    elif kind == "star":
        d.polygon(_star(cx, cy, r), fill=c)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * .8), (cx - r, cy + r * .8)], fill=c)
        d.polygon([(cx, cy - r * .2), (cx + r * .4, cy + r * .55), (cx - r * .4, cy + r * .55)], fill=WHITE)
    elif kind == "leaf":
        d.polygon(_leaf(cx, cy, r), fill=c)
        d.line([(cx - r * .7, cy + r * .5), (cx + r * .6, cy - r * .45)], fill=WHITE, width=w)
    else:  # wave
        d.ellipse(_bb(cx, cy, r), outline=c, width=w + 1)
        xs = np.linspace(cx - r * .75, cx + r * .75, 16)
        for k in (-0.35, 0.15):
            d.line([(x, cy + k * r + 0.22 * r * math.sin((x - cx) / r * 6)) for x in xs], fill=c, width=w + 1)


def _draw_hero(d: ImageDraw.ImageDraw, spec: ProductSpec, cx: float, cy: float, r: float) -> None:
    """The family's big central illustration: its strongest visual cue."""
    rng = np.random.default_rng(zlib.crc32(spec.family.encode()))  # identical for look-alikes
    c, dark, k, lw = spec.hero_color, _shade(spec.hero_color, 0.6), spec.hero, max(1, int(r / 15))
    if k == "fruit":
        for dx, dy, f in ((-.45, .15, .55), (.45, .2, .5), (0, -.15, .6)):
            x, y, rr = cx + dx * r, cy + dy * r, f * r
            d.ellipse(_bb(x, y, rr), fill=c, outline=dark, width=lw)
            d.ellipse(_bb(x - .33 * rr, y - .43 * rr, .18 * rr), fill=_shade(c, 1.5))
        d.polygon(_leaf(cx + .3 * r, cy - .8 * r, .35 * r), fill=(40, 150, 50))
    elif k == "bowl":
        for x, y in rng.uniform(-1, 1, (18, 2)) * (.75 * r, .25 * r):
            d.ellipse(_bb(cx + x, cy - .1 * r + y, .16 * r, .1 * r), fill=_shade(c, rng.uniform(0.8, 1.3)))
        d.chord((cx - r, cy - .8 * r, cx + r, cy + r), 0, 180, fill=WHITE, outline=dark, width=lw)
    elif k == "bubbles":
        for x, y, rr in rng.uniform(-1, 1, (9, 3)) * (r, .7 * r, .15 * r) + (0, .1 * r, .25 * r):
            d.ellipse(_bb(cx + x, cy + y, rr), outline=WHITE, width=lw)
            d.ellipse(_bb(cx + x - .35 * rr, cy + y - .45 * rr, .15 * rr), fill=WHITE)
    elif k == "beans":
        for x, y, a in rng.uniform(-1, 1, (6, 3)) * (.7 * r, .6 * r, 1.5):
            pts = _leaf(cx + x, cy + y, .3 * r, a)
            d.polygon(pts, fill=c, outline=dark)
            d.line([pts[3], pts[8]], fill=dark, width=lw)
    elif k == "sun":
        d.polygon(_star(cx, cy, r, 12, 0.7), fill=c)
        d.ellipse(_bb(cx, cy, .55 * r), fill=_shade(c, 1.3), outline=dark)
    elif k == "mountains":
        d.ellipse(_bb(cx + .55 * r, cy - .75 * r, .25 * r), fill=(255, 210, 60))
        for dx, f, sh in ((-.45, .8, 0.8), (.3, 1.0, 1.0)):
            px, top, foot = cx + dx * r, cy + .7 * r - 1.5 * f * r, cy + .7 * r
            d.polygon([(px - f * r, foot), (px, top), (px + f * r, foot)], fill=_shade(c, sh))
            snow = top + .37 * f * r
            d.polygon([(px - .25 * f * r, snow), (px, top), (px + .25 * f * r, snow)], fill=WHITE)
    elif k == "splash":
        t = np.linspace(0, 2 * math.pi, 40)
        rad = r * (0.75 + 0.2 * np.sin(7 * t + rng.uniform(0, 6)))
        d.polygon(list(zip(cx + rad * np.cos(t), cy + 0.7 * rad * np.sin(t))), fill=WHITE, outline=c, width=lw)
        d.ellipse(_bb(cx, cy, .35 * r, .25 * r), fill=c)
    else:  # checker cloth
        q = 2 * r / 5
        for i, j in itertools.product(range(5), range(5)):
            x, y = cx - r + i * q, cy - .7 * r + j * .7 * q
            d.rectangle((x, y, x + q, y + .7 * q), fill=c if (i + j) % 2 else WHITE)


def _draw_bands(d: ImageDraw.ImageDraw, spec: ProductSpec, x0: float, y0: float, w: float, h: float) -> None:
    """Big second-colour block behind the hero; it always covers the variant-text row."""
    x1, y1, c, a = x0 + w, y0 + h, spec.band_color, spec.accent_color
    if spec.band_style == 0:
        d.rectangle((x0, y0 + .5 * h, x1, y0 + .88 * h), fill=c)
        d.rectangle((x0, y0 + .88 * h, x1, y0 + .9 * h), fill=a)
    elif spec.band_style == 1:
        d.polygon([(x0, y0 + .52 * h), (x1, y0 + .38 * h), (x1, y1), (x0, y1)], fill=c)
        d.line([(x0, y0 + .52 * h), (x1, y0 + .38 * h)], fill=a, width=max(1, int(h / 60)))
    elif spec.band_style == 2:
        d.ellipse(_bb(x0 + .5 * w, y0 + .63 * h, .4 * w), fill=a)
        d.rectangle((x0, y0 + .76 * h, x1, y1), fill=c)
    else:
        xs = np.linspace(x0, x1, 24)
        top = [(x, y0 + .56 * h + .05 * h * math.sin((x - x0) / w * 2 * math.pi)) for x in xs]
        d.polygon(top + [(x1, y1), (x0, y1)], fill=c)


def _draw_pattern(d: ImageDraw.ImageDraw, spec: ProductSpec, x0: float, y0: float, w: float, h: float,
                  logo_xy: tuple[float, float]) -> None:
    """Subtle family texture on the body: dots, diagonal stripes or a sunburst from the logo."""
    c = _shade(spec.body_color, 0.86 if sum(spec.body_color) > 300 else 1.35)
    if spec.pattern == 1:
        step = w / 6
        for i, yy in enumerate(np.arange(y0 + step / 2, y0 + h, step)):
            for xx in np.arange(x0 + (step / 2 if i % 2 else 0), x0 + w + step, step):
                d.ellipse(_bb(xx, yy, w / 40), fill=c)
    elif spec.pattern == 2:
        for k in np.arange(-h, w, w / 5):
            d.line([(x0 + k, y0 + h), (x0 + k + h, y0)], fill=c, width=max(1, int(w / 18)))
    elif spec.pattern == 3:
        cx, cy = logo_xy
        for i in range(0, 24, 2):
            a0, a1 = i * math.pi / 12, (i + 1) * math.pi / 12
            d.polygon([(cx, cy), (cx + 2 * h * math.cos(a0), cy + 2 * h * math.sin(a0)),
                       (cx + 2 * h * math.cos(a1), cy + 2 * h * math.sin(a1))], fill=c)


def _draw_barcode(d: ImageDraw.ImageDraw, spec: ProductSpec, box: tuple) -> None:
    x0, y0, x1, y1 = box
    d.rectangle(box, fill=WHITE)
    bits, bw = zlib.crc32(spec.family.encode()), (x1 - x0 - 4) / 22
    for i in range(22):
        if (bits >> (i % 32)) & 1 or i % 5 == 0:
            d.rectangle((x0 + 2 + i * bw, y0 + 2, x0 + 2 + (i + .6) * bw, y1 - 2), fill=(15, 15, 15))


def _draw_detail(d: ImageDraw.ImageDraw, spec: ProductSpec, cx: float, cy: float, r: float) -> None:
    """The variant's badge or fruit icon (a cap is drawn with the shape instead)."""
    c = spec.detail_color
    if spec.detail_kind == "badge":
        d.ellipse(_bb(cx, cy, r), fill=c, outline=WHITE, width=max(1, int(r / 8)))
        _fit_text(d, (cx, cy), spec.variant, 1.5 * r, 0.6 * r, WHITE)
    elif spec.detail_kind == "icon":
        d.ellipse((cx - r, cy - r * .9, cx + r, cy + r), fill=c)
        d.polygon(_leaf(cx + r * .35, cy - r * 1.05, r * .5), fill=(50, 150, 50))
        d.ellipse(_bb(cx - .38 * r, cy - .33 * r, .17 * r), fill=_shade(c, 1.6))


def _draw_label(img: Image.Image, spec: ProductSpec, front: tuple) -> None:
    """Artwork of the front face, clipped to the product's silhouette within ``front``."""
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = front
    w, h = x1 - x0, y1 - y0
    logo_xy = (x0 + (.2 if spec.logo_left else .5) * w, y0 + .12 * h)
    _draw_pattern(d, spec, x0, y0, w, h, logo_xy)
    _draw_bands(d, spec, x0, y0, w, h)
    _draw_logo(d, spec.logo, *logo_xy, min(.13 * w, .07 * h), spec.accent_color)
    brand = spec.brand.upper() if spec.logo_left else spec.brand
    _fit_text(d, (x0 + .5 * w, y0 + .3 * h), brand, .88 * w, .13 * h, spec.text_color)
    _fit_text(d, (x0 + .5 * w, y0 + .45 * h), spec.line, .8 * w, .075 * h, spec.text_color)
    _draw_hero(d, spec, x0 + .5 * w, y0 + .64 * h, min(.33 * w, .135 * h))
    on_band = WHITE if sum(spec.band_color) < 450 else (25, 25, 25)
    _fit_text(d, (x0 + .38 * w, y0 + .81 * h), spec.variant, .55 * w, .055 * h, on_band, bold=False)
    _draw_detail(d, spec, x1 - .2 * w, y0 + .87 * h, min(.16 * w, .075 * h))
    if spec.barcode:
        _draw_barcode(d, spec, (x0 + .06 * w, y0 + .86 * h, x0 + .4 * w, y0 + .96 * h))
    clip = Image.new("L", img.size, 0)
    ImageDraw.Draw(clip).rectangle(front, fill=255)
    layer.putalpha(ImageChops.darker(ImageChops.darker(layer.getchannel("A"), clip), img.getchannel("A")))
    img.alpha_composite(layer)


# ----------------------------------------------------------------------------- packaging

def _cylinder_shading(img: Image.Image, x0: float, x1: float) -> Image.Image:
    """Darken the edges and add a specular stripe so bottles, cans and tubs read as round."""
    a = np.asarray(img).astype(np.float32)
    t = np.clip((np.arange(img.width) - x0) / max(1.0, x1 - x0), 0, 1)
    spec = np.exp(-((t - 0.28) / 0.06) ** 2)
    prof = 0.72 + 0.33 * np.sin(np.pi * t) ** 0.6 + 0.22 * spec
    a[..., :3] = np.clip(a[..., :3] * prof[None, :, None] + 25 * spec[None, :, None], 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGBA")


def _render_rgba(spec: ProductSpec, n: int) -> Image.Image:
    """Draw the package on an n x n transparent canvas: body, label artwork, then cap/lid/rim."""
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d, s, h = ImageDraw.Draw(img), spec.shape, 0.86 * n
    depth = 0.16 if s in ("box", "carton") else 0.0  # visible side face, light perspective
    w = min(spec.aspect * h, 0.9 * n / (1 + depth))
    h = w / spec.aspect
    dx, dy = depth * w, (0.05 * h if depth else 0.0)
    x0 = (n - w - dx) / 2
    x1, top, y1, cx = x0 + w, (n - h) / 2, (n + h) / 2, (n - dx) / 2
    bc = spec.body_color
    body = bc + (255,)
    cc = spec.detail_color if spec.detail_kind == "cap" else spec.accent_color
    cap, cap_edge = cc + (255,), _shade(cc, 0.6) + (255,)
    if s in ("box", "carton"):
        roof, fin = (0.14 * h, 0.04 * h) if s == "carton" else (0.0, 0.0)
        y0 = top + dy + roof + fin
        front = (x0, y0, x1, y1)
        d.polygon([(x1, y0), (x1 - (.03 * w if roof else -dx), top + fin), (x1 + dx, top + fin + .5 * roof),
                   (x1 + dx, y1 - dy), (x1, y1)], fill=_shade(bc, 0.7) + (255,))  # side face
        if roof:
            d.rectangle((x0 + .03 * w, top, x1 - .03 * w, top + fin), fill=_shade(bc, 0.9) + (255,))
            d.polygon([(x0, y0), (x0 + .03 * w, top + fin), (x1 - .03 * w, top + fin), (x1, y0)],
                      fill=_shade(bc, 1.15) + (255,))
        else:
            d.polygon([(x0, y0), (x0 + dx, top), (x1 + dx, top), (x1, y0)], fill=_shade(bc, 1.12) + (255,))
            d.polygon([(x1, y0 + .55 * h), (x1 + dx, y0 + .5 * h), (x1 + dx, y0 + .6 * h), (x1, y0 + .65 * h)],
                      fill=_shade(spec.band_color, 0.75) + (255,))
        d.rectangle(front, fill=body)
    elif s == "bottle":
        nw, cap_h, shoulder = .34 * w, .09 * h, top + .32 * h
        d.rectangle((cx - nw / 2, top + cap_h, cx + nw / 2, top + .17 * h), fill=body)
        neck = top + .16 * h
        d.polygon([(cx - nw / 2, neck), (cx + nw / 2, neck), (x1, shoulder), (x0, shoulder)], fill=body)
        d.rounded_rectangle((x0, shoulder - 2, x1, y1), radius=.12 * w, fill=body)
        front = (x0, shoulder + .04 * h, x1, y1 - .05 * h)
    elif s == "can":
        e = .09 * w
        d.ellipse((x0, y1 - 2 * e, x1, y1), fill=(150, 150, 155, 255))
        d.rectangle((x0, top + e, x1, y1 - e), fill=body)
        front = (x0, top + e, x1, y1 - e)
    elif s == "pouch":
        ys = np.linspace(top + .08 * h, y1, 20)
        bulge = .05 * w * np.sin(np.pi * (ys - top) / h)
        d.rectangle((x0, top, x1, top + .09 * h), fill=_shade(bc, 0.8) + (255,))  # crimped seal
        left, right = list(zip(x0 - bulge, ys)), list(zip(x1 + bulge, ys))[::-1]
        d.polygon(left + right, fill=body)
        front = (x0 - .05 * w, top + .1 * h, x1 + .05 * w, y1)
    else:  # tub: tapered pot under a foil lid
        d.polygon([(x0, top + .07 * w), (x1, top + .07 * w), (x1 - .1 * w, y1), (x0 + .1 * w, y1)], fill=body)
        front = (x0 + .06 * w, top + .14 * w, x1 - .06 * w, y1)
    _draw_label(img, spec, front)
    if s == "carton":
        d.ellipse(_bb(x1 - .36 * w, y0 - .07 * h, .14 * w, .1 * w), fill=cap, outline=cap_edge,
                  width=max(1, int(w / 40)))
    elif s == "bottle":
        d.rounded_rectangle((cx - nw * .7, top, cx + nw * .7, top + cap_h), radius=cap_h / 4, fill=cap,
                            outline=cap_edge, width=max(1, int(w / 90)))
    elif s == "can":
        d.ellipse((x0, top, x1, top + 2 * e), fill=(205, 205, 210, 255), outline=(140, 140, 145, 255), width=2)
        d.ellipse(_bb(cx, top + .95 * e, .12 * w, .45 * e), fill=(170, 170, 175, 255))  # ring pull
    elif s == "tub":
        d.ellipse((x0 - .02 * w, top, x1 + .02 * w, top + .14 * w), fill=(235, 235, 238, 255),
                  outline=spec.accent_color + (255,), width=max(2, int(w / 60)))
    return _cylinder_shading(img, x0, x1) if s in ("bottle", "can", "tub") else img


@lru_cache(maxsize=64)
def _product_rgba(spec: ProductSpec, size: int) -> Image.Image:
    """Tightly cropped transparent render at 2x ``size`` (supersampled; cached, never mutate)."""
    img = _render_rgba(spec, 2 * size)
    return img.crop(img.getchannel("A").getbbox())


def _scaled(img: Image.Image, f: float, resample: int = Image.BILINEAR) -> Image.Image:
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), resample)


def render_product(spec: ProductSpec, size: int = 256) -> Image.Image:
    """Clean in-shop catalog photo: the product centred on near-white with a soft floor shadow."""
    prod = _product_rgba(spec, size)
    prod = _scaled(prod, 0.76 * size / max(prod.size), Image.LANCZOS)
    out = Image.new("RGB", (size, size), (250, 250, 250))
    x, y = (size - prod.width) // 2, (size - prod.height) // 2
    shadow = Image.new("L", (size, size), 0)
    ImageDraw.Draw(shadow).ellipse(_bb(size / 2, y + prod.height, prod.width / 2, size * .03), fill=90)
    out.paste((200, 200, 200), (0, 0), shadow.filter(ImageFilter.GaussianBlur(size / 60)))
    out.paste(prod, (x, y), prod)
    return out

"""Product specs of the synthetic shop: brands, lines, look-alike families, colours."""

from __future__ import annotations

import colorsys
import itertools
import re
from dataclasses import dataclass

import numpy as np


RGB = tuple[int, int, int]
JPEG_QUALITY = 90
LOOKALIKE_FRACTION = 0.4  # target share of SKUs that have look-alikes in their family
SHAPES = ("box", "carton", "bottle", "can", "pouch", "tub")
LOGOS = ("circle", "star", "triangle", "leaf", "wave")
HEROES = ("fruit", "bowl", "bubbles", "beans", "sun", "mountains", "splash", "checker")
# category | shapes | product lines | variants | where the variant colour shows | brands
_TEMPLATES = tuple(tuple(f.split("|") if i in (1, 2, 3, 5) else f for i, f in enumerate(row)) for row in (
    ("Dairy/Milk", "carton", "Milk|Organic Milk|Barista Milk",
     "0.5%|1.5%|3%|3.8%", "cap", "Nordmejeri|Alpvale|Green Meadow"),
    ("Dairy/Yoghurt", "tub", "Yoghurt|Greek Yoghurt|Skyr",
     "Plain|Strawberry|Vanilla|Blueberry", "icon", "Nordmejeri|Lattella|Bruna"),
    ("Beverages/Juice", "bottle|carton", "Juice|Smoothie|Nectar",
     "Orange|Apple|Mango|Cherry", "icon", "Sunvale|Pressa|Everyday"),
    ("Beverages/Soda", "can", "Cola|Tonic|Lemonade",
     "Original|Zero|Lime|Cherry", "badge", "Fizzco|Polar Pop|Everyday"),
    ("Snacks/Cereal", "box", "Corn Flakes|Granola|Choco Puffs",
     "Honey|Berry|Nut|Classic", "icon", "Krunchy|Golden Field|Everyday"),
    ("Snacks/Crisps", "pouch", "Crisps|Ridges|Tortilla Chips",
     "Salted|Paprika|Sour Cream|Chili", "badge", "Crispo|Tatos|Everyday"),
    ("Household/Detergent", "bottle|box", "Detergent|Laundry Gel|Softener",
     "Color|White|Sensitive|Black", "cap", "Brightwash|Purelo|Everyday"),
    ("Household/Dishwash", "bottle", "Dish Soap|Rinse Aid",
     "Lemon|Original|Aloe|Mint", "cap", "Brightwash|Sparkla|Ocean Fresh"),
    ("Pantry/Pasta", "box|pouch", "Spaghetti|Penne|Fusilli",
     "500 g|1 kg|Wholegrain", "badge", "Casa Rossi|Pastina|Everyday"),
    ("Pantry/Coffee", "pouch|can", "Coffee|Espresso|Filter Roast",
     "Mild|Medium|Dark|Decaf", "badge", "Bergkaffe|Aroma Hill|Everyday"),
    ("Pantry/Tea", "box", "Tea|Green Tea|Herbal Tea",
     "Mint|Lemon|Chamomile|Earl Grey", "icon", "Teaside|Leafy|Everyday"),
))
_ASPECT = {"box": 0.68, "carton": 0.42, "bottle": 0.4, "can": 0.56, "pouch": 0.74, "tub": 1.05}
_MODIFIERS = ("Plus", "Gold", "Bio", "Max", "Kids", "Extra", "Light", "Family")  # once lines run out
# Distinct, nameable colours: look-alike variants differ clearly, but only locally.
_DETAIL_COLORS: tuple[RGB, ...] = (
    (220, 30, 40), (30, 80, 200), (40, 160, 60), (250, 200, 20), (130, 50, 170),
    (245, 120, 20), (90, 190, 230), (235, 100, 170), (60, 60, 60), (150, 90, 40))
WHITE: RGB = (255, 255, 255)


@dataclass(frozen=True)
class ProductSpec:
    """Everything needed to draw one SKU; look-alikes share all fields but sku/name/variant/detail_color."""

    sku: str
    name: str
    category: str  # "Dairy/Milk"
    brand: str
    line: str
    variant: str  # e.g. "3%": differs within a family
    family: str  # brand+line slug; SKUs sharing it are look-alikes
    shape: str  # one of SHAPES
    aspect: float  # width / height of the front face
    body_color: RGB
    band_color: RGB
    accent_color: RGB
    text_color: RGB
    band_style: int  # second-colour block: 0 band, 1 diagonal split, 2 disc + foot, 3 wave
    pattern: int  # body texture: 0 plain, 1 dots, 2 diagonal stripes, 3 sunburst
    logo: str  # one of LOGOS
    logo_left: bool
    hero: str  # one of HEROES: the big central illustration
    hero_color: RGB
    detail_kind: str  # cap | badge | icon: where detail_color shows
    detail_color: RGB  # differs within a family
    barcode: bool


def slugify(text: str) -> str:
    """Filesystem-safe lowercase id: 'Milk 0.5%' -> 'milk-0-5pct'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("%", "pct").replace("&", "and")).strip("-")


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def _family_style(rng: np.random.Generator, brand_hue: float) -> dict:
    """Colours shared by a whole family: mostly saturated bodies, readable text."""
    hue = brand_hue + rng.normal(0, 0.05) if rng.random() < 0.5 else rng.random()
    light = rng.random() < 0.25
    body = (_hsv(hue, rng.uniform(0.04, 0.2), rng.uniform(0.93, 1.0)) if light
            else _hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.45, 0.9)))
    return dict(body_color=body, text_color=_hsv(brand_hue, 0.85, 0.35) if light else WHITE,
                band_color=_hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.6, 0.9), rng.uniform(0.5, 0.9)),
                accent_color=_hsv(hue + rng.uniform(0.1, 0.9), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))


def make_product_specs(n_skus: int = 48, seed: int = 0) -> list[ProductSpec]:
    """Deterministic catalog of ``n_skus`` products cycling over the categories, about
    LOOKALIKE_FRACTION of them in look-alike families of 2-4 so that retrieval is fine-grained."""
    if n_skus < 1:
        raise ValueError(f"n_skus must be >= 1, got {n_skus}")
    rng = np.random.default_rng(seed)
    brands: dict[str, dict] = {}
    pools: dict[int, list] = {}  # template -> unused (brand, line) pairs
    refills: dict[int, int] = {}
    used: set[str] = set()
    grouped = 0
    specs: list[ProductSpec] = []
    for t in itertools.cycle(rng.permutation(len(_TEMPLATES)).tolist()):
        if len(specs) >= n_skus:
            break
        category, shapes, lines, variants, detail, brand_pool = _TEMPLATES[t]
        if not pools.get(t):  # (re)fill; later rounds invent sub-lines ("Granola Gold")
            rnd = refills[t] = refills.get(t, -1) + 1
            suffix = f" {_MODIFIERS[(rnd - 1) % len(_MODIFIERS)]}" if rnd else ""
            suffix += f" {rnd}" if rnd > len(_MODIFIERS) else ""
            pairs = [(b, ln + suffix) for b in brand_pool for ln in lines]
            pools[t] = [pairs[i] for i in rng.permutation(len(pairs))]
        brand, line = pools[t].pop()
        family = slugify(f"{brand} {line}")
        if family in used:
            continue
        used.add(family)
        b = brands.setdefault(brand, dict(hue=rng.random(), logo=LOGOS[rng.integers(len(LOGOS))],
                                          logo_left=bool(rng.random() < 0.6)))
        shape = shapes[rng.integers(len(shapes))]
        k = int(rng.choice([2, 2, 3, 3, 4])) if grouped <= LOOKALIKE_FRACTION * len(specs) else 1
        k = min(k, len(variants), n_skus - len(specs))
        grouped += k if k > 1 else 0
        chosen = sorted(rng.choice(len(variants), size=k, replace=False).tolist())
        colors = rng.choice(len(_DETAIL_COLORS), size=k, replace=False).tolist()
        common = dict(category=category, brand=brand, line=line, family=family, shape=shape,
                      aspect=round(_ASPECT[shape] * rng.uniform(0.9, 1.1), 3),
                      band_style=int(rng.integers(4)), logo=b["logo"], logo_left=b["logo_left"],
                      detail_kind=detail if detail != "cap" or shape in ("carton", "bottle") else "badge",
                      barcode=bool(rng.random() < 0.6), pattern=int(rng.integers(4)),
                      hero=HEROES[rng.integers(len(HEROES))],
                      hero_color=_hsv(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.5, 1)),
                      **_family_style(rng, b["hue"]))
        for vi, ci in zip(chosen, colors):
            name = f"{brand} {line} {variants[vi]}"
            specs.append(ProductSpec(sku=slugify(name), name=name, variant=variants[vi],
                                     detail_color=_DETAIL_COLORS[ci], **common))
    return specs

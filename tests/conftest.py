"""Shared fixtures: tiny catalogs drawn on the fly, one real embedder per session."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from prodsearch.retrieval import create_embedder


def product_image(seed: int, size: int = 96) -> Image.Image:
    """A distinct 'product': a box with its own pattern (stripes, checks, rings...) and shapes, on white."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    m = size // 8
    a, b = colour(), colour()
    draw.rectangle([m, m, size - m, size - m], fill=a)
    step = int(rng.integers(size // 12, size // 5))
    pattern = int(rng.integers(0, 4))
    for k in range(m, size - m, 2 * step):
        if pattern == 0:
            draw.rectangle([m, k, size - m, min(k + step, size - m)], fill=b)
        elif pattern == 1:
            draw.rectangle([k, m, min(k + step, size - m), size - m], fill=b)
        elif pattern == 2:
            for j in range(m, size - m, 2 * step):
                draw.rectangle([k, j, min(k + step, size - m), min(j + step, size - m)], fill=b)
        else:
            r = size // 2 - k
            if r > 0:
                draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], outline=b, width=max(1, step // 2))
    for _ in range(3):
        x0, y0 = rng.integers(m, size - 3 * m, 2)
        w, h = rng.integers(m, 3 * m, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour())
    return img


def snapshot(img: Image.Image, seed: int) -> Image.Image:
    """A 'customer photo' of a product image: slightly rotated, cropped, darker."""
    rng = np.random.default_rng(seed)
    out = img.rotate(float(rng.uniform(-6, 6)), fillcolor=(200, 200, 190))
    w, h = out.size
    c = int(w * 0.04)
    out = out.crop((c, c, w - c, h - c)).resize((w, h))
    return Image.eval(out, lambda v: int(v * 0.92))


def write_folder_catalog(root: Path, skus: list[str], per_sku: int = 1, seed0: int = 0) -> Path:
    """root/<sku>/<sku>_<i>.jpg with distinct images per SKU."""
    for s, sku in enumerate(skus):
        (root / sku).mkdir(parents=True, exist_ok=True)
        for i in range(per_sku):
            product_image(seed0 + 1000 * s + i).save(root / sku / f"{sku}_{i}.jpg", quality=92)
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def embedder():
    """The default ImageNet lite0 embedder, created once (tests must not modify it)."""
    return create_embedder()


@pytest.fixture
def folder_catalog(tmp_path) -> Path:
    return write_folder_catalog(tmp_path / "catalog", [f"sku-{i}" for i in range(6)])


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, embedder):
    """A small index (6 SKUs, one of them with 2 photos) and query snapshots with ground truth."""
    from prodsearch.indexer import build_index

    root = tmp_path_factory.mktemp("built")
    skus = [f"sku-{i}" for i in range(6)]
    catalog = write_folder_catalog(root / "catalog", skus)
    product_image(5001).save(catalog / "sku-5" / "extra.jpg")
    queries = root / "queries"
    for s, sku in enumerate(skus):
        (queries / sku).mkdir(parents=True)
        snapshot(product_image(1000 * s), seed=s).save(queries / sku / "q.jpg", quality=90)
    index_dir = root / "idx"
    build_index(catalog, index_dir, embedder=embedder, num_workers=0)
    return {"root": root, "catalog": catalog, "queries": queries, "index": index_dir, "skus": skus}

"""Catalog lifecycle cost: add / remove / update against a full rebuild, at two index sizes.

On a generated catalog of 10,000 small images (1,000 SKUs x 10), times `add` of 100 new images,
`remove` of those 100, an `update` with nothing to do, and a full rebuild of the 10,100 images; the
same add on a 1,000-image index shows that an add costs what is added, not what is held.

    python benchmarks/catalog_ops.py            # lite0 at 224 px, about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from prodsearch.eval.report import markdown_table
from prodsearch.indexer.build import build_index
from prodsearch.indexer.info import index_info
from prodsearch.indexer.lifecycle import add_to_index, remove_from_index, update_index
from prodsearch.retrieval.factory import create_embedder

ROOT = Path(__file__).resolve().parents[1]


def product(rng: np.random.Generator, size: int) -> Image.Image:
    """A small made-up product photo: a coloured box with bands and shapes on white."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    m = size // 8
    draw.rectangle([m, m, size - m, size - m], fill=colour())
    for _ in range(5):
        x, y = rng.integers(m, size - 2 * m, 2)
        w, h = rng.integers(m // 2, 2 * m, 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x), int(y), int(x + w), int(y + h)], fill=colour())
    return img


def write_catalog(root: Path, skus: list[str], per_sku: int, seed: int, size: int = 64) -> Path:
    if root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    for sku in skus:
        (root / sku).mkdir(parents=True)
        for i in range(per_sku):
            product(rng, size).save(root / sku / f"{i}.jpg", quality=90)
    return root


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "catalog-ops")
    parser.add_argument("--images", type=int, default=10_000, help="size of the large catalog")
    parser.add_argument("--img-size", type=int, default=224, help="model input size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out
    big = write_catalog(out / "catalog", [f"sku{i:05d}" for i in range(args.images // 10)], 10, seed=0)
    small = write_catalog(out / "catalog-1k", [f"sku{i:05d}" for i in range(100)], 10, seed=0)
    new = write_catalog(out / "new", [f"new{i:03d}" for i in range(10)], 10, seed=1)
    embedder = create_embedder(img_size=args.img_size)  # one model for all, as the CLI would load it each time

    rows = []
    for name, catalog in (("10k", big), ("1k", small)):
        index_dir = out / f"index-{name}"
        shutil.rmtree(index_dir, ignore_errors=True)
        seconds, report = timed(build_index, catalog, index_dir, model=embedder)
        rows.append({"operation": f"build ({name} index)", "images": report.images, "seconds": seconds})
        seconds, report = timed(add_to_index, new, index_dir)
        rows.append({"operation": f"add 100 new images to the {name} index", "images": report.added, "seconds": seconds})
        seconds, report = timed(add_to_index, new, index_dir)
        rows.append({"operation": f"add the same 100 again ({name}, no-op)", "images": report.added, "seconds": seconds})
    index_dir = out / "index-10k"
    seconds, report = timed(update_index, big, index_dir)  # removes the 100 added: the catalog lacks them
    rows.append({"operation": "update 10k index (removes the 100 added)", "images": report.removed, "seconds": seconds})
    add_to_index(new, index_dir)  # back in, to time their removal
    seconds, report = timed(remove_from_index, index_dir, skus=[f"new{i:03d}" for i in range(10)])
    rows.append({"operation": "remove 100 images (10 SKUs) from the 10k index", "images": report.removed, "seconds": seconds})
    seconds, report = timed(update_index, big, index_dir)
    rows.append({"operation": "update 10k index, nothing changed", "images": report.unchanged, "seconds": seconds})
    both = out / "catalog-plus-new"
    if not both.is_dir():
        shutil.copytree(big, both)
        shutil.copytree(new, both, dirs_exist_ok=True)
    seconds, report = timed(build_index, both, index_dir, model=embedder)
    rebuild = seconds
    rows.append({"operation": "full rebuild of the 10k index + 100 (in place)", "images": report.images, "seconds": seconds})
    assert index_info(index_dir).consistent
    for row in rows:
        row["x faster than full rebuild"] = rebuild / row["seconds"] if row["seconds"] else float("inf")
    print(f"Catalog operations, lite0 at {args.img_size} px, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, {'GPU' if torch.cuda.is_available() else 'CPU'}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()

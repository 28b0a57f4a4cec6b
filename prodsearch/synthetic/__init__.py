"""Synthetic packaged-goods shop: catalog photos plus customer snapshots.

Lets ``prodsearch demo`` and the tests run on a fresh machine with no data. Catalog photos are
clean renders on near-white; snapshots imitate phone photos (perspective, rotation, scale,
shelf clutter, occlusion, lighting, blur, sensor noise). Families of look-alike SKUs (same brand
and line) differ only in a small detail - cap, badge or fruit-icon colour plus the variant text -
which is what makes retrieval fine-grained. Only numpy and Pillow; same seed, same bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.synthetic.render import render_product
from prodsearch.synthetic.snapshot import render_snapshot
from prodsearch.synthetic.specs import (HEROES, JPEG_QUALITY, LOGOS, LOOKALIKE_FRACTION, SHAPES, ProductSpec,
                                        make_product_specs, slugify)

logger = logging.getLogger(__name__)

__all__ = ["HEROES", "JPEG_QUALITY", "LOGOS", "LOOKALIKE_FRACTION", "SHAPES", "ProductSpec", "SyntheticDataset",
           "make_product_specs", "render_product", "render_snapshot", "slugify", "write_synthetic_dataset"]


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`write_synthetic_dataset` put things (CSV image paths are relative to ``root``)."""

    catalog_dir: Path
    queries_dir: Path
    catalog_csv: Path
    queries_csv: Path
    products: list[ProductSpec]
    train_dir: Path | None = None  # training snapshots, when asked for: never the evaluation ones
    train_csv: Path | None = None  # catalog photos plus training snapshots: what ``prodsearch train`` takes


def write_synthetic_dataset(root: str | os.PathLike, n_skus: int = 48, snapshots_per_sku: int = 3,
                            size: int = 256, seed: int = 0, train_snapshots_per_sku: int = 0) -> SyntheticDataset:
    """Write root/catalog/<sku>/<sku>.jpg, root/queries/<sku>/<sku>_<i>.jpg and both CSVs, so a
    demo or test needs no downloaded data. Same arguments, same bytes (JPEG quality is fixed).

    With ``train_snapshots_per_sku``, also root/train/<sku>/<sku>_<i>.jpg and train.csv (those plus
    the catalog photos): snapshots drawn from their own stream, so training never sees an evaluation
    snapshot and the evaluation snapshots are the same bytes with or without them."""
    root = Path(root)
    specs = make_product_specs(n_skus, seed)
    rows: dict[str, list] = {"catalog": [], "queries": [], "train": []}
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([seed, i])  # one stream per SKU
        train_rng = np.random.default_rng([seed, i, 1])  # and another for its training snapshots
        images = [("catalog", f"{spec.sku}.jpg", render_product(spec, size))]
        images += [("queries", f"{spec.sku}_{j}.jpg", render_snapshot(spec, rng, size))
                   for j in range(snapshots_per_sku)]
        images += [("train", f"{spec.sku}_{j}.jpg", render_snapshot(spec, train_rng, size))
                   for j in range(train_snapshots_per_sku)]
        for kind, fname, img in images:
            rel = Path(kind, spec.sku, fname)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel, "JPEG", quality=JPEG_QUALITY)
            rows[kind].append({"image": root / rel, "sku": spec.sku, "name": spec.name, "category": spec.category})
    training = train_snapshots_per_sku > 0
    ds = SyntheticDataset(catalog_dir=root / "catalog", queries_dir=root / "queries",
                          catalog_csv=root / "catalog.csv", queries_csv=root / "queries.csv", products=specs,
                          train_dir=root / "train" if training else None,
                          train_csv=root / "train.csv" if training else None)
    ds.queries_dir.mkdir(parents=True, exist_ok=True)
    write_catalog_csv(ds.catalog_csv, rows["catalog"])
    write_catalog_csv(ds.queries_csv, rows["queries"])
    if ds.train_csv is not None:
        write_catalog_csv(ds.train_csv, rows["catalog"] + rows["train"])
    logger.info("wrote synthetic shop: %d SKUs in %d families, %d snapshots (%d more for training), %d px, under %s",
                len(specs), len({s.family for s in specs}), len(rows["queries"]), len(rows["train"]), size, root)
    return ds

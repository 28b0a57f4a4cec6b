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


def write_synthetic_dataset(root: str | os.PathLike, n_skus: int = 48, snapshots_per_sku: int = 3,
                            size: int = 256, seed: int = 0) -> SyntheticDataset:
    """Write root/catalog/<sku>/<sku>.jpg, root/queries/<sku>/<sku>_<i>.jpg and both CSVs, so a
    demo or test needs no downloaded data. Same arguments, same bytes (JPEG quality is fixed)."""
    root = Path(root)
    specs = make_product_specs(n_skus, seed)
    rows: dict[str, list] = {"catalog": [], "queries": []}
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([seed, i])  # one stream per SKU
        images = [("catalog", f"{spec.sku}.jpg", render_product(spec, size))]
        images += [("queries", f"{spec.sku}_{j}.jpg", render_snapshot(spec, rng, size))
                   for j in range(snapshots_per_sku)]
        for kind, fname, img in images:
            rel = Path(kind, spec.sku, fname)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel, "JPEG", quality=JPEG_QUALITY)
            rows[kind].append({"image": root / rel, "sku": spec.sku, "name": spec.name, "category": spec.category})
    ds = SyntheticDataset(catalog_dir=root / "catalog", queries_dir=root / "queries",
                          catalog_csv=root / "catalog.csv", queries_csv=root / "queries.csv", products=specs)
    ds.queries_dir.mkdir(parents=True, exist_ok=True)
    write_catalog_csv(ds.catalog_csv, rows["catalog"])
    write_catalog_csv(ds.queries_csv, rows["queries"])
    logger.info("wrote synthetic shop: %d SKUs in %d families, %d snapshots, %d px, under %s",
                len(specs), len({s.family for s in specs}), len(rows["queries"]), size, root)
    return ds

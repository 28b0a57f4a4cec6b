"""Building an index folder from a catalog: hash, de-duplicate, embed, write, publish."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prodsearch.errors import CatalogError
from prodsearch.indexer.catalog_db import create_catalog_db
from prodsearch.indexer.manifest import CATALOG_DB, VECTORS, Manifest, check_target, publish, staging_dir, write_manifest
from prodsearch.indexer.sources import Item, Skipped, read_listing
from prodsearch.indexer.vectors import add_vectors, create_vector_index, index_type_name, write_vector_index
from prodsearch.retrieval.embedder import DEFAULT_MODEL, Embedder, EmbedderConfig, create_embedder
from prodsearch.retrieval.embedding import Progress, embed_files

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Duplicate:
    path: str
    same_as: str
    sku: str


@dataclass
class BuildReport:
    index_dir: Path
    skus: int
    images: int
    duplicates: list[Duplicate] = field(default_factory=list)  # same file twice in one SKU: stored once
    shared_across_skus: int = 0  # files whose bytes appear under more than one SKU
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.embed_seconds if self.embed_seconds > 0 else 0.0


def file_md5(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dedupe(items: list[Item], skipped: list[Skipped]) -> tuple[list[Item], list[str], list[Duplicate], int]:
    """Keep the first of identical files within a SKU; count files shared between SKUs."""
    unique, hashes, duplicates = [], [], []
    first: dict[tuple[str, str], Item] = {}
    skus_of_hash: dict[str, set[str]] = {}
    for item in items:
        try:
            digest = file_md5(item.path)
        except OSError as exc:
            skipped.append(Skipped(str(item.path), f"cannot read file: {exc.strerror or exc}"))
            continue
        key = (item.sku, digest)
        if key in first:
            duplicates.append(Duplicate(str(item.path), str(first[key].path), item.sku))
            continue
        first[key] = item
        skus_of_hash.setdefault(digest, set()).add(item.sku)
        unique.append(item)
        hashes.append(digest)
    shared = sum(1 for d in hashes if len(skus_of_hash[d]) > 1)
    return unique, hashes, duplicates, shared


def _products(items: list[Item]) -> list[dict]:
    """One row per SKU; the first non-empty name and category given for a SKU win."""
    products: dict[str, dict] = {}
    for item in items:
        row = products.setdefault(item.sku, {"sku": item.sku, "name": None, "category": None})
        row["name"] = row["name"] or item.name
        row["category"] = row["category"] or item.category
    for row in products.values():
        row["name"] = row["name"] or row["sku"]
    return list(products.values())


def build_index(
    catalog: str | os.PathLike,
    index_dir: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    embedder: Embedder | None = None,
    index_type: str = "auto",
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """Index every readable image of ``catalog`` into ``index_dir`` (replacing an older index there)."""
    start = time.perf_counter()
    index_dir = Path(index_dir)
    check_target(index_dir)
    listing = read_listing(catalog)
    skipped = list(listing.skipped)
    items, hashes, duplicates, shared = _dedupe(listing.items, skipped)
    embedder = embedder or create_embedder(model)

    result = embed_files(embedder, [it.path for it in items], batch_size=batch_size, device=device,
                         num_workers=num_workers, progress=progress)
    for pos, reason in sorted(result.failures.items()):
        skipped.append(Skipped(str(items[pos].path), reason))
    kept = [items[p] for p in result.positions]
    if not kept:
        example = f"; e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise CatalogError(f"none of the {len(skipped)} image files in {catalog} could be read{example}")

    images = [
        {"id": i, "sku": it.sku, "path": str(it.path), "md5": hashes[p], "width": int(w), "height": int(h)}
        for i, (it, p, (w, h)) in enumerate(zip(kept, result.positions, result.sizes))
    ]
    write_index_dir(index_dir, embedder.config, _products(kept), images, result.vectors,
                    catalog_source=str(listing.source), index_type=index_type)
    report = BuildReport(index_dir, len({it.sku for it in kept}), len(kept), duplicates, shared, skipped,
                         time.perf_counter() - start, result.seconds)
    log.info("indexed %d images of %d SKUs into %s", report.images, report.skus, index_dir)
    return report


def write_index_dir(
    index_dir: str | os.PathLike,
    config: EmbedderConfig,
    products: list[dict],
    images: list[dict],
    vectors: np.ndarray,
    *,
    catalog_source: str = "",
    index_type: str = "auto",
) -> None:
    """Write a complete index folder from catalog rows and their vectors (row i of ``vectors`` is
    ``images[i]``), staged beside ``index_dir`` and renamed into place."""
    index_dir = Path(index_dir)
    index = create_vector_index(config.embed_dim, len(images), index_type)
    add_vectors(index, vectors, np.array([img["id"] for img in images], dtype=np.int64))
    staged = staging_dir(index_dir)
    try:
        create_catalog_db(staged / CATALOG_DB, products, images)
        write_vector_index(index, staged / VECTORS)
        write_manifest(staged, Manifest(config, index_type_name(index), index.ntotal, len(products), catalog_source))
        publish(staged, index_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
